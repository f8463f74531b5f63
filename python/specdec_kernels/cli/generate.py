"""Generate text with the runner: specdec generate "PROMPT" [--model PATH.gguf|DIR] [--max-new-tokens N] ..."""
import sys

from specdec_kernels.cli.args import (
    default_model_path,
    model_path,
    non_negative_float,
    non_negative_int,
    positive_int,
    readable_file,
    top_p,
)
from specdec_kernels.decoding import generate, speculative_generate
from specdec_kernels.drafters import (
    DEFAULT_TREE,
    SHAPE_WITH_LOOKUP,
    EagleDrafter,
    NgramLookup,
    default_head_path,
)
from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer
from specdec_kernels.models import RUNNER_X_DIGITS, load_model


def add_arguments(parser):
    parser.add_argument("prompt", help="the user's message (rendered with the model's chat template)")
    parser.add_argument("--model", type=model_path, help="a GGUF file or a Hugging Face checkpoint directory (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0)
    parser.add_argument("--top-p", type=top_p, default=1.0)
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="0: no top-k filter")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--head", type=readable_file, help="EAGLE head (default: the one shipped for the model, if any)")
    parser.add_argument("--no-draft", action="store_true", help="plain decoding, one token per forward")
    parser.add_argument("--no-lookup", action="store_true", help="EAGLE-2 trees (drafters.DEFAULT_TREE) instead of the "
                        "head's chain with a prompt-lookup chain (SHAPE_WITH_LOOKUP)")
    parser.add_argument("--x-digits", type=int, choices=(1, 2, 3), default=RUNNER_X_DIGITS,
                        help="activation digits of the target's GEMMs on the CPU integer paths (ops.w4a16_gemm; "
                        "the drafter keeps drafters.eagle.DRAFT_X_DIGITS)")


def run(args):
    path = args.model or default_model_path()
    tokenizer = load_tokenizer(path)
    model = load_model(path, x_digits=args.x_digits)
    prompt = chat_prompt_ids(tokenizer, [{"role": "user", "content": args.prompt}])
    produced = []

    def stream(token):
        produced.append(token)
        text = tokenizer.decode(produced, skip_special_tokens=True)
        previous = tokenizer.decode(produced[:-1], skip_special_tokens=True)
        sys.stdout.write(text[len(previous):])
        sys.stdout.flush()

    options = {"stop_tokens": [tokenizer.eos_token_id], "stream": stream}
    head = None if args.no_draft else args.head or default_head_path(path)
    if head:
        drafter = EagleDrafter.from_file(head, model)
        lookup = None if args.no_lookup else NgramLookup()
        result = speculative_generate(model, drafter, prompt, args.max_new_tokens, args.temperature, args.top_p,
                                      args.top_k, args.seed, lookup=lookup,
                                      shape=DEFAULT_TREE if lookup is None else SHAPE_WITH_LOOKUP, **options)
    else:
        result = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed,
                          **options)
    drafts = "" if not head else " (EAGLE-2 trees)" if args.no_lookup else " (EAGLE chain + prompt lookup)"
    print(f"\n[{len(result.tokens)} tokens in {result.seconds:.2f} s: {len(result.tokens) / result.seconds:.1f} tokens/s, "
          f"{result.mean_accepted:.2f} tokens per target forward{drafts}]")
    return 0
