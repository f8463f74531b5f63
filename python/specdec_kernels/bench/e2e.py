"""End-to-end decoding on Spec-Bench-style prompts: tokens/s, speedup over `vanilla`, tokens per target forward."""
import json
import os
import time
from collections import defaultdict
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import torch

from specdec_kernels.bench.common import print_table, write_json

# The end-to-end prompt set, package data: found from any working directory and in an installed package.
DEFAULT_PROMPTS = resources.files("specdec_kernels").joinpath("data", "spec_bench_mini.jsonl")


def add_arguments(parser):
    import argparse

    from specdec_kernels.cli.args import model_path, non_negative_float, positive_int, readable_file
    from specdec_kernels.drafters import DraftShape

    def method_names(text):  # checked here, split in run()
        names = [m.strip() for m in text.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or repr(text)}; "
                                             f"known: {', '.join(METHODS)}")
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
    parser.add_argument("--methods", type=method_names, default="vanilla,hf,hf-pld")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0)
    parser.add_argument("--model", type=model_path, help="a GGUF file or a Hugging Face directory (default: the embedded model)")
    parser.add_argument("--limit", type=positive_int, help="at most this many prompts per category")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write a PNG of tokens/s per method and category here")
    parser.add_argument("--head", type=readable_file, help="EAGLE head for chain, eagle2 and their -pld forms (default: the one shipped for the model)")
    parser.add_argument("--tree", type=tree_shape, default=None, help="eagle2 tree as TOTAL_TOKENS,DEPTH,TOP_K (default: "
                        "drafters.DEFAULT_TREE)")
    parser.add_argument("--predictor", type=readable_file, help="draft length predictor for ada, eagle2-ada and ada-pld (default: the "
                        "one shipped for the model, heads/NAME.ldlp.pt)")
    parser.add_argument("--chain-length", type=positive_int, default=None, help="draft tokens per chain step (default: "
                        "drafters.DEFAULT_CHAIN)")
    parser.add_argument("--x-digits", type=int, choices=(1, 2, 3), default=None, help="activation digits of the runner's GEMMs "
                        "on the CPU integer paths (default: models.RUNNER_X_DIGITS; the drafter keeps "
                        "drafters.eagle.DRAFT_X_DIGITS)")


def require_predictor(model_path: str, predictor_path) -> str:
    """The length predictor file the ada methods use, or SystemExit saying how to get one (none is shipped)."""
    if predictor_path is None:
        raise SystemExit(f"no draft length predictor for {model_path} (methods {', '.join(ADA_METHODS)}): train "
                         "one with python -m specdec_kernels.train.ldlp --out PATH and pass --predictor PATH")
    if not os.path.exists(predictor_path):
        raise SystemExit(f"--predictor {predictor_path}: no such file")
    return predictor_path


class Harness:
    """What every method needs: the tokenizer, our runner and (lazily) the transformers model."""

    def __init__(self, path: str, max_new_tokens: int, temperature: float, head_path=None, tree=None,
                 chain_length=None, x_digits=None, predictor_path=None):
        from specdec_kernels.drafters import (
            DEFAULT_CHAIN,
            DEFAULT_TREE,
            DraftShape,
            default_head_path,
            default_predictor_path,
        )
        from specdec_kernels.engines.transformers import load_tokenizer
        from specdec_kernels.models import RUNNER_X_DIGITS, load_model

        self.path, self.max_new_tokens, self.temperature = path, max_new_tokens, temperature
        self.x_digits = x_digits or RUNNER_X_DIGITS
        self.tokenizer = load_tokenizer(path)
        self.model = load_model(path, x_digits=self.x_digits)
        self._hf = self._drafter = self._predictor = None
        self.head_path = head_path or default_head_path(path)
        self.predictor_path = predictor_path or default_predictor_path(path)
        self.tree = tree or DEFAULT_TREE
        self.chain = DraftShape.chain(chain_length) if chain_length else DEFAULT_CHAIN

    @property
    def drafter(self):
        if self._drafter is None:
            from specdec_kernels.drafters import EagleDrafter

            if self.head_path is None:
                raise SystemExit(f"no EAGLE head for {self.path}: train one (python -m specdec_kernels.train.eagle) "
                                 "and pass --head")
            self._drafter = EagleDrafter.from_file(self.head_path, self.model)
        return self._drafter

    @property
    def predictor(self):
        if self._predictor is None:
            from specdec_kernels.drafters import load_predictor

            self._predictor = load_predictor(require_predictor(self.path, self.predictor_path), self.model)
        return self._predictor

    @property
    def ada_chain(self):
        """The chain the predictor cuts: as long as it may ask for."""
        from specdec_kernels.drafters import DraftShape

        return DraftShape.chain(self.predictor.config.k_max)

    @property
    def hf(self):
        if self._hf is None:
            from specdec_kernels.engines.transformers import load_hf_model

            self._hf = load_hf_model(self.path)
            self.hf_forwards = 0
            self._hf.register_forward_hook(lambda *_: setattr(self, "hf_forwards", self.hf_forwards + 1))
        return self._hf


def run_vanilla(h: Harness, prompt_ids):
    """-> (new tokens, seconds, target forwards, draft lengths: per step, for methods with a length predictor)"""
    from specdec_kernels.decoding import generate

    result = generate(h.model, prompt_ids, h.max_new_tokens, h.temperature, seed=0,
                      stop_tokens=[h.tokenizer.eos_token_id])
    return result.tokens, result.seconds, result.steps + 1, []


def _run_speculative(h: Harness, prompt_ids, shape, lookup=False, predictor=None):
    from specdec_kernels.decoding import speculative_generate
    from specdec_kernels.drafters import NgramLookup

    result = speculative_generate(h.model, h.drafter, prompt_ids, h.max_new_tokens, h.temperature, seed=0,
                                  stop_tokens=[h.tokenizer.eos_token_id], lookup=NgramLookup() if lookup else None,
                                  shape=shape, predictor=predictor)
    return result.tokens, result.seconds, result.steps + 1, result.draft_lengths


def _run_hf(h: Harness, prompt_ids, **extra):
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
    return out[0, len(prompt_ids):].tolist(), seconds, max(h.hf_forwards, 1), []


METHODS = {
    "vanilla": run_vanilla,
    "hf": _run_hf,
    "hf-pld": lambda h, ids: _run_hf(h, ids, prompt_lookup_num_tokens=10),
    "chain": lambda h, ids: _run_speculative(h, ids, h.chain),
    "eagle2": lambda h, ids: _run_speculative(h, ids, h.tree),
    # the same drafts with a prompt-lookup chain grafted in (drafters.ngram)
    "chain-pld": lambda h, ids: _run_speculative(h, ids, h.chain, lookup=True),
    "eagle2-pld": lambda h, ids: _run_speculative(h, ids, h.tree, lookup=True),
    # AdaEAGLE: the length predictor (drafters.ldlp) sets each step's chain length / tree depth
    "ada": lambda h, ids: _run_speculative(h, ids, h.ada_chain, predictor=h.predictor),
    "eagle2-ada": lambda h, ids: _run_speculative(h, ids, h.tree, predictor=h.predictor),
    "ada-pld": lambda h, ids: _run_speculative(h, ids, h.ada_chain, lookup=True, predictor=h.predictor),
}
ADA_METHODS = ("ada", "eagle2-ada", "ada-pld")


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


def run_conversation(h: Harness, method, turns):
    """All turns of one question; the history holds the method's own earlier answers."""
    from specdec_kernels.engines.transformers import chat_prompt_ids

    messages, tokens, seconds, steps, texts, draft_lengths = [], [], 0.0, 0, [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        new, dt, forwards, lengths = method(h, chat_prompt_ids(h.tokenizer, messages))
        answer = h.tokenizer.decode(new, skip_special_tokens=True)
        messages.append({"role": "assistant", "content": answer})
        tokens += new
        seconds += dt
        steps += forwards
        texts.append(answer)
        draft_lengths += lengths
    return tokens, seconds, steps, texts, draft_lengths


def summarize(records, methods):
    summary = {}
    for name in methods:
        rows = [r for r in records if r["method"] == name]
        tokens = sum(r["new_tokens"] for r in rows)
        seconds = sum(r["seconds"] for r in rows)
        steps = sum(r["steps"] for r in rows)
        summary[name] = {"tokens_per_s": tokens / seconds, "mean_accepted": tokens / steps,
                         "identical_to_vanilla": all(r["identical_to_vanilla"] for r in rows)}
        lengths = [k for r in rows for k in r.get("draft_lengths", [])]
        if lengths:
            summary[name]["mean_draft_length"] = sum(lengths) / len(lengths)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    from tqdm import tqdm

    from specdec_kernels.models import embedded_model_path

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    tree = None
    if args.tree:
        from specdec_kernels.drafters import DraftShape

        tree = DraftShape(*(int(v) for v in args.tree.split(",")))
    model_path = args.model or embedded_model_path()
    if set(methods) & set(ADA_METHODS):  # before the model loads
        from specdec_kernels.drafters import default_predictor_path

        require_predictor(model_path, args.predictor or default_predictor_path(model_path))
    harness = Harness(model_path, args.max_new_tokens, args.temperature, args.head, tree, args.chain_length,
                      args.x_digits, args.predictor)
    prompts = load_prompts(args.prompts, args.limit)
    records, vanilla_tokens = [], {}
    # The methods take turns on each prompt, so that the shared machine's drift hits them alike.
    for item in tqdm(prompts, desc=", ".join(methods)):
        for name in methods:
            tokens, seconds, steps, texts, draft_lengths = run_conversation(harness, METHODS[name], item["turns"])
            if name == "vanilla":
                vanilla_tokens[item["question_id"]] = tokens
            records.append({"question_id": item["question_id"], "category": item["category"], "method": name,
                            "new_tokens": len(tokens), "seconds": seconds, "steps": steps,
                            "mean_accepted": len(tokens) / steps,
                            "identical_to_vanilla": vanilla_tokens.get(item["question_id"]) == tokens,
                            "output": texts, **({"draft_lengths": draft_lengths} if draft_lengths else {})})
    summary = summarize(records, methods)
    if args.json:
        write_json(args.json, {"methods": summary, "prompts": records,
                               "settings": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                                            "prompts": str(args.prompts), "limit": args.limit, "head": harness.head_path,
                                            "predictor": harness.predictor_path,
                                            "tree": asdict(harness.tree), "chain": asdict(harness.chain),
                                            "x_digits": harness.x_digits}})
    if args.plot:
        plot(records, methods, args.plot)
    print_table([{"method": m, **s} for m, s in summary.items()],
                [("method", "method", "{}"), ("tokens_per_s", "tokens/s", "{:.1f}"), ("speedup", "speedup", "{:.2f}"),
                 ("speedup_per_sample_mean", "per-sample", "{:.2f}"), ("mean_accepted", "tokens/forward", "{:.2f}"),
                 ("identical_to_vanilla", "identical", "{}")])
    return 0
