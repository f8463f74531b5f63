"""Generate text with the runner: specdec generate "PROMPT" [--model PATH.gguf|DIR] [--max-new-tokens N] ..."""
import sys

from specdec_kernels.cli.args import (
    UsageError,
    add_draft_arguments,
    default_model_path,
    model_path,
    non_negative_float,
    non_negative_int,
    positive_int,
    top_p,
)
from specdec_kernels.decoding import ContextOverflow, check_sampling
from specdec_kernels.engines.transformers import user_prompt_ids
from specdec_kernels.methods import DEFAULT_METHOD, METHODS, Decoder, MissingPart
from specdec_kernels.models import RUNNER_X_DIGITS
from specdec_kernels.models.tokenizer import load_chat_tokenizer


def add_arguments(parser):
    parser.add_argument("prompt", help="the user's message, rendered with the model's chat template (a model without "
                        "one, a base model, continues the raw text)")
    parser.add_argument("--model", type=model_path, help="a GGUF file or a Hugging Face checkpoint directory (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0)
    parser.add_argument("--top-p", type=top_p, default=1.0)
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="0: no top-k filter")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--method", choices=list(METHODS), help=f"how to decode (default: {DEFAULT_METHOD} when the "
                        "model has an EAGLE head, else vanilla): " + "; ".join(f"{k}: {v}" for k, v in METHODS.items()))
    add_draft_arguments(parser)
    parser.add_argument("--x-digits", type=int, choices=(1, 2, 3), default=RUNNER_X_DIGITS,
                        help="activation digits of the target's GEMMs on the CPU integer paths (ops.w4a16_gemm; "
                        "the drafter keeps drafters.eagle.DRAFT_X_DIGITS)")


def run(args):
    path = args.model or default_model_path()
    try:
        check_sampling(args.temperature, args.top_p, args.top_k)  # what argparse's types leave (a tiny temperature)
        decoder = Decoder(path, None, args.head, args.predictor, args.intermediate, min_draft=args.min_draft,
                          x_digits=args.x_digits, recalibrate=args.recalibrate)
        method = args.method or (DEFAULT_METHOD if decoder.head_path else "vanilla")
        decoder.check(method)
        decoder.model  # loaded before the tokenizer: a damaged or unsupported file is a ValueError naming it
    except (MissingPart, ValueError) as error:  # the command line's: a part, a setting or the file itself
        raise UsageError(str(error)) from None
    tokenizer = load_chat_tokenizer(path)  # cached: no transformers on the way to the first token
    prompt = user_prompt_ids(tokenizer, args.prompt)
    produced = []

    def stream(token):
        produced.append(token)
        text = tokenizer.decode(produced, skip_special_tokens=True)
        previous = tokenizer.decode(produced[:-1], skip_special_tokens=True)
        sys.stdout.write(text[len(previous):])
        sys.stdout.flush()

    try:
        result = decoder.generate(method, prompt, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                                  top_k=args.top_k, seed=args.seed, stop_tokens=[tokenizer.eos_token_id], stream=stream)
    except ContextOverflow as error:
        raise UsageError(f"{error}: shorten the prompt") from None
    print(f"\n[{len(result.tokens)} tokens in {result.seconds:.2f} s: {len(result.tokens) / result.seconds:.1f} tokens/s, "
          f"{result.mean_accepted:.2f} tokens per target forward, method {method}]")
    if result.stop_reason == "context_full":  # not an error: the answer is all the model could hold
        print(f"specdec: the answer stopped at the model's context length ({decoder.model.max_seq_len} tokens)",
              file=sys.stderr)
    return 0
