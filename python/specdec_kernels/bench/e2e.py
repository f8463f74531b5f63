"""End-to-end decoding on Spec-Bench-style prompts: tokens/s, speedup over `vanilla`, tokens per target forward."""
import json
import time
from collections import defaultdict
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch

from specdec_kernels.bench.common import print_table, pyplot, write_json
from specdec_kernels.hierarchical import MIN_DRAFT

# The end-to-end prompt set, package data: found from any working directory and in an installed package.
DEFAULT_PROMPTS = resources.files("specdec_kernels").joinpath("data", "spec_bench_mini.jsonl")


def add_arguments(parser):
    import argparse

    from specdec_kernels.cli.args import (
        add_draft_arguments,
        model_path,
        non_negative_float,
        positive_int,
        readable_file,
    )
    from specdec_kernels.drafters import DraftShape

    def methods(text):  # checked here, split in run()
        names = [m.strip() for m in text.split(",") if m.strip()]
        unknown = [m for m in names if m not in method_names()]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or repr(text)}; "
                                             f"known: {', '.join(method_names())}")
        return text

    def tree_shape(text):  # checked here, parsed in run()
        try:
            DraftShape(*(int(v) for v in text.split(",")))
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be TOTAL_TOKENS,DEPTH,TOP_K (total_tokens >= 1, depth >= 0, "
                                             f"top_k >= 1), got {text!r}") from None
        return text

    parser.add_argument("--prompts", type=readable_file, default=DEFAULT_PROMPTS, help="JSON lines: question_id, category, turns "
                        "(default: the packaged specdec_kernels/data/spec_bench_mini.jsonl)")
    parser.add_argument("--methods", type=methods, default="vanilla,hf,hf-pld")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0)
    parser.add_argument("--model", type=model_path, help="a GGUF file or a Hugging Face directory (default: the embedded model)")
    parser.add_argument("--limit", type=positive_int, help="at most this many prompts per category")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write a PNG of tokens/s per method and category here")
    parser.add_argument("--tree", type=tree_shape, default=None, help="the tree of eagle2 (and its variants) and of "
                        "hier's rounds, as TOTAL_TOKENS,DEPTH,TOP_K (default: drafters.DEFAULT_TREE)")
    add_draft_arguments(parser)
    parser.add_argument("--chain-length", type=positive_int, default=None, help="draft tokens per chain step (default: "
                        "drafters.DEFAULT_CHAIN)")
    parser.add_argument("--x-digits", type=int, choices=(1, 2, 3), default=None, help="activation digits of the runner's GEMMs "
                        "on the CPU integer paths (default: models.RUNNER_X_DIGITS; the drafter keeps "
                        "drafters.eagle.DRAFT_X_DIGITS)")


class Harness:
    """What every method needs: the tokenizer, our runner with the parts of our methods (methods.Decoder) and
    (lazily) the transformers model."""

    def __init__(self, path: str, max_new_tokens: int, temperature: float, head_path=None, tree=None,
                 chain_length=None, x_digits=None, predictor_path=None, intermediate_path=None, min_draft=MIN_DRAFT,
                 recalibrate=False):
        from specdec_kernels.drafters import DEFAULT_CHAIN, DEFAULT_TREE, DraftShape
        from specdec_kernels.methods import Decoder
        from specdec_kernels.models import RUNNER_X_DIGITS

        self.path, self.max_new_tokens, self.temperature = path, max_new_tokens, temperature
        self.x_digits = x_digits or RUNNER_X_DIGITS
        self._hf = None
        self._llamacpp = {}
        self.decoder = Decoder(path, None, head_path, predictor_path, intermediate_path, tree or DEFAULT_TREE,
                               DraftShape.chain(chain_length) if chain_length else DEFAULT_CHAIN,
                               min_draft, self.x_digits, recalibrate)

    @property
    def tokenizer(self):
        if self.__dict__.get("_tokenizer") is None:
            from specdec_kernels.engines.transformers import load_tokenizer

            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @property
    def hf(self):
        if self._hf is None:
            from specdec_kernels.engines.transformers import load_hf_model

            self._hf = load_hf_model(self.path)
            self.hf_forwards = 0
            self._hf.register_forward_hook(lambda *_: setattr(self, "hf_forwards", self.hf_forwards + 1))
        return self._hf

    def llamacpp(self, name: str):
        if name not in self._llamacpp:
            from specdec_kernels.engines.llamacpp import LlamaCpp

            self._llamacpp[name] = LlamaCpp(self.path, prompt_lookup=LLAMACPP_METHODS[name])
        return self._llamacpp[name]

    def check(self, methods) -> list:
        """Every part the methods need is there (checked before anything loads): a missing one exits with status 2.
        -> the methods to run: llama.cpp's are left out, with a message, when llama-cpp-python is absent."""
        import importlib.util

        from specdec_kernels.cli.args import UsageError
        from specdec_kernels.methods import MissingPart

        wanted = [name for name in methods if name in LLAMACPP_METHODS]
        if wanted and importlib.util.find_spec("llama_cpp") is None:
            print(f"skipping {', '.join(wanted)}: llama-cpp-python is not installed "
                  f"(pip install 'specdec-kernels[llamacpp]')")
            methods = [name for name in methods if name not in LLAMACPP_METHODS]
        elif wanted and not self.path.endswith(".gguf"):
            raise UsageError(f"{', '.join(wanted)} run GGUF files; {self.path} is not one")
        try:
            for name in methods:
                if name not in OTHER_ENGINES:
                    self.decoder.check(name)
        except MissingPart as error:
            raise UsageError(str(error)) from None
        return methods

    def run(self, name: str, prompt_ids):
        """-> GenerationResult of method `name` on one prompt (steps: target forwards after the prefill)."""
        if name in HF_METHODS:
            return _run_hf(self, prompt_ids, **HF_METHODS[name])
        if name in LLAMACPP_METHODS:
            return self.llamacpp(name).generate(prompt_ids, self.max_new_tokens, self.temperature,
                                                self.tokenizer.eos_token_id)
        return self.decoder.generate(name, prompt_ids, self.max_new_tokens, temperature=self.temperature, seed=0,
                                     stop_tokens=[self.tokenizer.eos_token_id])


def _run_hf(h: Harness, prompt_ids, **extra):
    from specdec_kernels.decoding import GenerationResult

    model = h.hf
    inputs = torch.tensor([prompt_ids])
    sampling = dict(do_sample=True, temperature=h.temperature) if h.temperature > 0 else dict(do_sample=False)
    h.hf_forwards = 0
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=h.max_new_tokens,
                             eos_token_id=h.tokenizer.eos_token_id, pad_token_id=h.tokenizer.eos_token_id,
                             **sampling, **extra)
    seconds = time.perf_counter() - start
    tokens = out[0, len(prompt_ids):].tolist()
    stop_reason = "stop_token" if tokens and tokens[-1] == h.tokenizer.eos_token_id else "max_new_tokens"
    return GenerationResult(tokens=tokens, stop_reason=stop_reason, steps=max(h.hf_forwards, 1) - 1, seconds=seconds)


# Other engines' own decoding, as their users run it: plain, and with their prompt lookup (transformers' assisted
# decoding; llama.cpp through llama-cpp-python, same GGUF file and threads)
HF_METHODS = {"hf": {}, "hf-pld": {"prompt_lookup_num_tokens": 10}}
LLAMACPP_METHODS = {"llamacpp": False, "llamacpp-pld": True}
OTHER_ENGINES = (*HF_METHODS, *LLAMACPP_METHODS)


def method_names():
    from specdec_kernels.methods import METHODS

    return list(METHODS) + list(OTHER_ENGINES)


def load_prompts(path=DEFAULT_PROMPTS, limit=None):
    """`path`: a file name, or a package resource (DEFAULT_PROMPTS)."""
    prompts, per_category = [], defaultdict(int)
    source = Path(path) if isinstance(path, str) else path
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            per_category[item["category"]] += 1
            if limit is None or per_category[item["category"]] <= limit:
                prompts.append(item)
    return prompts


def first_turns(path=DEFAULT_PROMPTS) -> list:
    """The first user turn of every prompt in a prompt file."""
    return [item["turns"][0] for item in load_prompts(path)]


def run_conversation(h: Harness, name: str, turns):
    """All turns of one question (the history holds the method's own earlier answers) -> (tokens, texts, stats):
    stats sums seconds and target forwards (prefills included), lists the per-step statistics and why each turn's
    answer ended (decoding.STOP_REASONS)."""
    from specdec_kernels.engines.transformers import conversation_ids

    messages, tokens, texts = [], [], []
    stats = {"seconds": 0.0, "steps": 0, "stage_seconds": {"draft": 0.0, "intermediate": 0.0, "verify": 0.0},
             "per_step": {"accepted": [], "draft_lengths": [], "intermediate_forwards": []}, "stop_reasons": []}
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        result = h.run(name, conversation_ids(h.tokenizer, messages))
        answer = h.tokenizer.decode(result.tokens, skip_special_tokens=True)
        messages.append({"role": "assistant", "content": answer})
        tokens += result.tokens
        texts.append(answer)
        stats["seconds"] += result.seconds
        stats["steps"] += result.steps + 1
        stats["stop_reasons"].append(result.stop_reason)
        for stage in stats["stage_seconds"]:
            stats["stage_seconds"][stage] += getattr(result, f"{stage}_seconds")
        stats["per_step"]["accepted"] += result.accepted_per_step
        stats["per_step"]["draft_lengths"] += result.draft_lengths
        stats["per_step"]["intermediate_forwards"] += result.intermediate_forwards
    return tokens, texts, stats


def summarize(records, methods):
    summary = {}
    for name in methods:
        rows = [r for r in records if r["method"] == name]
        tokens = sum(r["new_tokens"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        steps = sum(r["steps"] for r in rows)
        summary[name] = {"tokens_per_s": tokens / seconds, "mean_accepted": tokens / steps,
                         "identical_to_vanilla": all(r["identical_to_vanilla"] for r in rows)}
        per_step = {key: [v for r in rows for v in r["per_step"][key]] for key in rows[0]["per_step"]}
        if per_step["draft_lengths"]:
            summary[name]["mean_draft_length"] = sum(per_step["draft_lengths"]) / len(per_step["draft_lengths"])
        if per_step["intermediate_forwards"]:
            summary[name]["intermediate_forwards_per_step"] = (sum(per_step["intermediate_forwards"]) /
                                                               len(per_step["intermediate_forwards"]))
        # where the time goes, per target forward after the prefill (ms): draft, intermediate, target verification
        forwards = max(len(per_step["accepted"]), 1)
        summary[name]["stage_ms_per_step"] = {stage: 1e3 * sum(r["stage_seconds"][stage] for r in rows) / forwards
                                              for stage in rows[0]["stage_seconds"]}
    base = summary.get("vanilla", next(iter(summary.values())))["tokens_per_s"]
    for name in summary:
        summary[name]["speedup"] = summary[name]["tokens_per_s"] / base
        rows = [r for r in records if r["method"] == name]
        baseline = {r["question_id"]: r for r in records if r["method"] == "vanilla"}
        ratios = [(r["new_tokens"] / r["seconds"]) / (baseline[r["question_id"]]["new_tokens"] /
                                                       baseline[r["question_id"]]["seconds"])
                  for r in rows if r["question_id"] in baseline]
        summary[name]["speedup_per_sample_mean"] = sum(ratios) / len(ratios) if ratios else None
    return summary


def plot(records, methods, path):
    plt = pyplot()

    categories = sorted({r["category"] for r in records})
    fig, ax = plt.subplots(figsize=(1.4 * len(categories) + 2, 3.8))
    width = 0.8 / len(methods)
    for i, name in enumerate(methods):
        rates = []
        for c in categories:
            rows = [r for r in records if r["method"] == name and r["category"] == c]
            rates.append(sum(r["new_tokens"] for r in rows) / sum(r["seconds"] for r in rows))
        ax.bar([j + i * width for j in range(len(categories))], rates, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories, rotation=20)
    ax.set_ylabel("tokens/s")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")  # outside: bars fill the axes
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def run(args):
    from specdec_kernels.cli.args import UsageError
    from specdec_kernels.extras import progress_bar
    from specdec_kernels.models import embedded_model_path

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tree = None
    if args.tree:
        from specdec_kernels.drafters import DraftShape

        tree = DraftShape(*(int(v) for v in args.tree.split(",")))
    try:
        harness = Harness(args.model or embedded_model_path(), args.max_new_tokens, args.temperature, args.head, tree,
                          args.chain_length, args.x_digits, args.predictor, args.intermediate, args.min_draft,
                          args.recalibrate)
    except ValueError as error:  # the settings do not fit together (min_draft and the tree's depth)
        raise UsageError(str(error)) from None
    methods = harness.check(methods)
    if not methods:
        raise UsageError("no method left to run")
    prompts = load_prompts(args.prompts, args.limit)
    records, vanilla_tokens = [], {}
    # The methods take turns on each prompt, so that the shared machine's drift hits them alike.
    for item in progress_bar(prompts, desc=", ".join(methods)):
        for name in methods:
            tokens, texts, stats = run_conversation(harness, name, item["turns"])
            if name == "vanilla":
                vanilla_tokens[item["question_id"]] = tokens
            records.append({"question_id": item["question_id"], "category": item["category"], "method": name,
                            "new_tokens": len(tokens), "mean_accepted": len(tokens) / stats["steps"],
                            "identical_to_vanilla": vanilla_tokens.get(item["question_id"]) == tokens,
                            "output": texts, **stats})
    summary = summarize(records, methods)
    decoder = harness.decoder
    if args.json:
        write_json(args.json, {"methods": summary, "prompts": records,
                               "settings": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                            "prompts": str(args.prompts), "limit": args.limit,
                                            "head": decoder.head_path, "predictor": decoder.predictor_path,
                                            "intermediate": decoder.intermediate_source,
                                            "min_draft": decoder.min_draft,
                                            "tree": asdict(decoder.tree), "chain": asdict(decoder.chain),
                                            "x_digits": harness.x_digits}})
    if args.plot:
        plot(records, methods, args.plot)
    print_table([{"method": m, **s} for m, s in summary.items()],
                [("method", "method", "{}"), ("tokens_per_s", "tokens/s", "{:.1f}"), ("speedup", "speedup", "{:.2f}"),
                 ("speedup_per_sample_mean", "per-sample", "{:.2f}"), ("mean_accepted", "tokens/forward", "{:.2f}"),
                 ("identical_to_vanilla", "identical", "{}")])
    stages = [{"method": m, "draft_length": s.get("mean_draft_length"),
               "intermediate_forwards": s.get("intermediate_forwards_per_step"), **s["stage_ms_per_step"]}
              for m, s in summary.items() if m not in OTHER_ENGINES]
    if stages:
        print("\nPer target forward: mean draft length, intermediate forwards, ms per stage")
        print_table(stages, [("method", "method", "{}"), ("draft_length", "draft length", "{:.2f}"),
                             ("intermediate_forwards", "interm. fwd", "{:.2f}"), ("draft", "draft ms", "{:.2f}"),
                             ("intermediate", "interm. ms", "{:.2f}"), ("verify", "verify ms", "{:.2f}")])
    return 0
