"""Generate text with the runner: specdec generate "PROMPT" [--model PATH.gguf] [--max-new-tokens N] ..."""
import sys

from .generate import generate
from .hf import chat_prompt_ids, load_tokenizer
from .models import embedded_model_path, load_gguf


def add_arguments(parser):
    parser.add_argument("prompt", help="the user's message (rendered with the model's chat template)")
    parser.add_argument("--model", help="a GGUF file (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int)


def run(args):
    path = args.model or embedded_model_path()
    tokenizer = load_tokenizer(path)
    model = load_gguf(path)
    prompt = chat_prompt_ids(tokenizer, [{"role": "user", "content": args.prompt}])
    produced = []

    def stream(token):
        produced.append(token)
        text = tokenizer.decode(produced, skip_special_tokens=True)
        previous = tokenizer.decode(produced[:-1], skip_special_tokens=True)
        sys.stdout.write(text[len(previous):])
        sys.stdout.flush()

    result = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed,
                      stop_tokens=[tokenizer.eos_token_id], stream=stream)
    print(f"\n[{len(result.tokens)} tokens in {result.seconds:.2f} s: {len(result.tokens) / result.seconds:.1f} tokens/s]")
    return 0
