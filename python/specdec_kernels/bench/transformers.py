"""transformers running our parts, against its own generate: specdec bench transformers [--model GGUF] [--limit N]

The model converted to a specdec_w4a16 folder (specdec convert) and the same weights as a float32 folder; each
row decodes the first turn of the e2e prompts (one per category unless --limit), greedy, the methods taking
turns on each prompt:
- float32: transformers' model.generate on the dequantized weights (what a transformers user runs), alone and
  with its own prompt lookup (assisted decoding, 10 tokens);
- specdec_w4a16: model.generate with our quantizer (engines/hf_quantizer.py: each linear a W4A16Linear);
- specdec_w4a16 + pld / + eagle2: hf.speculative_generate on that model, our tree attention verifying prompt-
  lookup chains, or EAGLE-2 trees of the model's shipped EAGLE head (greedy: the same tokens as generate).
"""
import os
import tempfile
import time

import torch

from specdec_kernels.bench.common import print_table, write_json


def add_arguments(parser):
    parser.add_argument("--model", help="a GGUF file (default: the embedded model)")
    parser.add_argument("--limit", type=int, default=1, help="prompts per category (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", help="write the results here")


def run(args):
    from transformers import AutoModelForCausalLM

    from specdec_kernels import hf
    from specdec_kernels.bench.e2e import load_prompts
    from specdec_kernels.checkpoint.convert import convert, dequantize_folder
    from specdec_kernels.drafters import DEFAULT_TREE, EagleDrafter, NgramLookup, default_head_path
    from specdec_kernels.engines.hf_quantizer import register
    from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer
    from specdec_kernels.models import embedded_model_path

    path = args.model or embedded_model_path()
    folder = tempfile.mkdtemp(prefix="specdec-bench-")
    quantized, dense = convert(path, os.path.join(folder, "w4")), os.path.join(folder, "float")
    dequantize_folder(quantized, dense)
    register()
    hf.register()
    float_model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
    w4_model = AutoModelForCausalLM.from_pretrained(quantized, attn_implementation=hf.NAME).eval()
    tokenizer = load_tokenizer(quantized)
    head = default_head_path(path)
    drafter = EagleDrafter.from_file(head, hf.HFTarget(w4_model)) if head else None
    stop = [tokenizer.eos_token_id]

    def generate(model, ids, **extra):
        inputs = torch.tensor([ids])
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=args.max_new_tokens,
                             do_sample=False, eos_token_id=stop, pad_token_id=stop[0], **extra)
        return out[0, len(ids):].tolist()

    methods = {
        "float32 generate": lambda ids: generate(float_model, ids),
        "float32 + transformers' prompt lookup": lambda ids: generate(float_model, ids, prompt_lookup_num_tokens=10),
        "specdec_w4a16 generate": lambda ids: generate(w4_model, ids),
        "specdec_w4a16 + pld": lambda ids: hf.speculative_generate(w4_model, None, ids, args.max_new_tokens,
                                                                   lookup=NgramLookup(), stop_tokens=stop).tokens,
    }
    if drafter is not None:
        methods["specdec_w4a16 + eagle2"] = lambda ids: hf.speculative_generate(
            w4_model, drafter, ids, args.max_new_tokens, shape=DEFAULT_TREE, stop_tokens=stop).tokens
    totals = {name: [0, 0.0] for name in methods}
    outputs = {name: [] for name in methods}
    with torch.inference_mode():
        for item in load_prompts(limit=args.limit):
            ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": item["turns"][0]}])
            for name, decode in methods.items():
                start = time.perf_counter()
                tokens = decode(ids)
                totals[name][1] += time.perf_counter() - start
                totals[name][0] += len(tokens)
                outputs[name].append(tokens)
    base = totals["float32 generate"][0] / totals["float32 generate"][1]
    reference = outputs["specdec_w4a16 generate"]
    rows = [{"method": name, "tokens_per_s": n / s, "speedup": n / s / base,
             "same_as_w4a16_generate": outputs[name] == reference} for name, (n, s) in totals.items()]
    print_table(rows, [("method", "transformers", "{}"), ("tokens_per_s", "tokens/s", "{:.1f}"),
                       ("speedup", "vs float32", "{:.2f}x"), ("same_as_w4a16_generate", "= w4a16 generate", "{}")])
    if args.json:
        write_json(args.json, {"rows": rows, "max_new_tokens": args.max_new_tokens, "limit": args.limit})
