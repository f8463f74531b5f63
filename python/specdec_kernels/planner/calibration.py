"""The acceptance prior a head ships with: how often the target accepted a draft node of each path probability,
measured by decoding held-out prompts with method auto's planner (docs/design.md 4.9).

    python -m specdec_kernels.planner.calibration --out PATH [--model PATH] [--head PATH] [--corpus DIR]
        [--prompts 20] [--max-new-tokens 128] [--plot PNG]

The prompts are held out from everything tuned or trained here: round one of train/prompts.py under a seed no
corpus, head or predictor draws from, less the end-to-end benchmark's prompts, the texts the shipped EAGLE-1/2
head was trained on (seed 0's round one) and, with --corpus, the conversations of the corpus a head was trained
on. The prior lies next to its head (prior_path) and names the head it was measured for: a file that does not
check out is a warning, and the planner then starts from the drafter's own probabilities.
"""
import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from specdec_kernels.user_cache import write_atomic

from .acceptance import BINS, bin_of, monotone
from .costs import step_costs
from .policy import StepCosts
from .step_planner import Planner

FORMAT = 1
HELD_OUT_SEED = 100  # the corpus draws seeds 0-3, the shipped head seed 0, the length predictor seeds 0 and 1
HEAD_TRAINING_TOPIC_PROMPTS = (600, 1800)  # the shipped head's training rounds (seed 0; its metadata's commands)
FOLDER_PRIOR = "acceptance.json"  # the prior's name inside an EAGLE-3 head's folder
IDENTITY = [(i + 0.5) / BINS for i in range(BINS)]  # a calibrated drafter: each bin's centre


@dataclass
class Counts:
    """Verified draft nodes per bin of the drafter's path probability, and how many of them the target accepted."""

    seen: List[int] = field(default_factory=lambda: [0] * BINS)
    accepted: List[int] = field(default_factory=lambda: [0] * BINS)

    def rates(self) -> List[Optional[float]]:
        return [a / s if s else None for s, a in zip(self.seen, self.accepted)]


class RecordingPlanner(Planner):
    """The planner of method auto, unchanged, that also counts every verified node (kept across sequences)."""

    def __init__(self, costs: StepCosts):
        self.counts = Counts()
        super().__init__(costs)  # from the identity: the measurement does not depend on an earlier prior

    def observe(self, values, parents, accepted, emitted, nodes, drafted):
        for value, ok in zip(values, accepted):
            self.counts.seen[bin_of(value)] += 1
            self.counts.accepted[bin_of(value)] += int(ok)
        super().observe(values, parents, accepted, emitted, nodes, drafted)


def measure_calibration(target, drafter, costs: StepCosts, prompts: Sequence[List[int]], max_new_tokens: int,
                        stop_tokens=(), progress=lambda prompts: prompts) -> Counts:
    """Greedy method-auto decoding of each prompt (token ids) -> the verified nodes' counts per bin."""
    from specdec_kernels.decoding import speculative_generate

    planner = RecordingPlanner(costs)
    for ids in progress(prompts):
        speculative_generate(target, drafter, ids, max_new_tokens, stop_tokens=stop_tokens, planner=planner)
    return planner.counts


def fit_prior(counts: Counts) -> List[float]:
    """Each bin's observed acceptance, non-decreasing (pooled by counts); a bin with no observation takes the
    identity, moved to where its neighbours' pooling puts it."""
    rates = [IDENTITY[i] if rate is None else rate for i, rate in enumerate(counts.rates())]
    return monotone(rates, counts.seen)


# ---------------------------------------------------------------- the file next to the head
def prior_path(head_path: str) -> str:
    """X.eagle.safetensors -> X.acceptance.json (another head file X.ext: X.acceptance.json); an EAGLE-3 head's
    folder X.eagle3/ -> X.eagle3/acceptance.json."""
    if os.path.isdir(head_path):
        return os.path.join(head_path, FOLDER_PRIOR)
    from specdec_kernels.drafters.head_file import HEAD_SUFFIX

    stem = head_path[: -len(HEAD_SUFFIX)] if head_path.endswith(HEAD_SUFFIX) else os.path.splitext(head_path)[0]
    return stem + ".acceptance.json"


def head_identity(head_path: str) -> dict:
    """Name and size (a folder: its files' but the prior's): what a prior checks its head by, wherever it lies."""
    path = os.path.normpath(head_path)
    if os.path.isdir(path):
        size = sum(os.path.getsize(entry.path) for entry in os.scandir(path)
                   if entry.is_file() and entry.name != FOLDER_PRIOR)
    else:
        size = os.path.getsize(path)
    return {"name": os.path.basename(path), "bytes": size}


def save_prior(head_path: str, counts: Counts, path: Optional[str] = None, **metadata) -> str:
    """Write the prior fitted to `counts` for the head (at prior_path unless `path`) with its counts and metadata."""
    path = path or prior_path(head_path)
    entry = {"version": FORMAT, "head": head_identity(head_path), "prior": fit_prior(counts), "seen": counts.seen,
             "accepted": counts.accepted, **metadata}

    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(entry, f, indent=1)

    write_atomic(os.path.abspath(path), write)
    return path


def load_prior(head_path: Optional[str]) -> Optional[List[float]]:
    """The head's prior (BINS probabilities), or None when it has none; a file that is damaged, of another
    version or measured for another head is a warning and None (the planner then starts from the identity)."""
    path = prior_path(head_path) if head_path is not None else None
    if path is None or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            entry = json.load(f)
        return checked_prior(entry, head_identity(head_path))
    except (OSError, ValueError, RecursionError) as err:
        warnings.warn(f"specdec: ignoring the acceptance prior {path}: {err}; the planner starts from the "
                      "drafter's own probabilities", stacklevel=2)
        return None


def checked_prior(entry, head: dict) -> List[float]:
    if not isinstance(entry, dict) or entry.get("version") != FORMAT:
        raise ValueError(f"not a version {FORMAT} prior")
    if entry.get("head") != head:
        raise ValueError(f"measured for head {entry.get('head')}, this head is {head}")
    prior = entry.get("prior")
    if not (isinstance(prior, list) and len(prior) == BINS and
            all(type(p) in (int, float) and 0.0 <= p <= 1.0 for p in prior)):
        raise ValueError(f"the prior must be {BINS} probabilities in [0, 1]")
    return [float(p) for p in prior]


# ---------------------------------------------------------------- held-out prompts, table and plot
def held_out_conversations(count: int, corpus: Optional[str] = None) -> list:
    """The first `count` round-one conversations of HELD_OUT_SEED that no benchmark, head or corpus has seen."""
    from specdec_kernels.bench.e2e import first_turns
    from specdec_kernels.train.corpus import conversation_key, read_corpus
    from specdec_kernels.train.prompts import round_one

    trained_on = [m[0]["content"] for size in HEAD_TRAINING_TOPIC_PROMPTS
                  for m in round_one(seed=0, topic_prompts=size)]
    stored = set(read_corpus(corpus)[2]) if corpus else set()
    fresh = (m for m in round_one(seed=HELD_OUT_SEED, exclude=first_turns() + trained_on)
             if conversation_key(m) not in stored)
    return [m for _, m in zip(range(count), fresh)]


def table_rows(counts: Counts) -> List[dict]:
    return [{"bin": f"{i / BINS:.2f}-{(i + 1) / BINS:.2f}", "drafter": IDENTITY[i], "observed": rate, "prior": prior,
             "count": seen} for i, (rate, prior, seen) in enumerate(zip(counts.rates(), fit_prior(counts), counts.seen))]


def plot(counts: Counts, path: str, title: str) -> None:
    from specdec_kernels.bench.common import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated (identity)")
    ax.step(IDENTITY, fit_prior(counts), where="mid", color="tab:orange", label="prior (pooled, monotone)")
    observed = [(x, rate, seen) for x, rate, seen in zip(IDENTITY, counts.rates(), counts.seen) if seen]
    most = max([seen for _, _, seen in observed], default=1)
    ax.scatter([x for x, _, _ in observed], [r for _, r, _ in observed],
               s=[20 + 280 * math.sqrt(seen / most) for _, _, seen in observed], alpha=0.7, label="observed")
    for x, rate, seen in observed:
        ax.annotate(str(seen), (x, rate), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="drafter's path probability (bin centre)",
           ylabel="accepted by the target")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---------------------------------------------------------------- command line
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m specdec_kernels.planner.calibration",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the prior's JSON file (the planner reads prior_path(head))")
    parser.add_argument("--model", help="a GGUF file or a Hugging Face directory (default: the embedded model)")
    parser.add_argument("--head", help="EAGLE head file or EAGLE-3 folder (default: the one shipped for the model)")
    parser.add_argument("--corpus", help="leave out this corpus' conversations (the one the head was trained on)")
    parser.add_argument("--prompts", type=int, default=20, help="held-out prompts decoded")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--plot", help="write the calibration curve as a PNG here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.head and not os.path.exists(args.head):
        parser.error(f"--head {args.head}: no such file or folder")

    import torch

    from specdec_kernels.bench.common import print_table
    from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer
    from specdec_kernels.extras import progress_bar
    from specdec_kernels.methods import Decoder
    from specdec_kernels.models import embedded_model_path

    decoder = Decoder(args.model or embedded_model_path(), head_path=args.head)
    head = args.head or decoder.planned_head  # by default the head method auto drafts with
    if head is None:
        parser.error(f"no EAGLE head for {decoder.model_path}: pass --head")
    drafter = decoder.drafter3 if head == decoder.eagle3_path else decoder.drafter
    tokenizer = load_tokenizer(decoder.model_path)
    prompts = [chat_prompt_ids(tokenizer, m) for m in held_out_conversations(args.prompts, args.corpus)]
    started = time.perf_counter()
    counts = measure_calibration(decoder.model, drafter, step_costs(decoder.model, drafter, decoder.model_path, head),
                                 prompts, args.max_new_tokens, [tokenizer.eos_token_id],
                                 lambda items: progress_bar(items, desc="held-out prompts", unit="prompt"))
    seconds = time.perf_counter() - started
    print_table(table_rows(counts), [("bin", "p bin", "{}"), ("drafter", "drafter p", "{:.3f}"),
                                     ("observed", "accepted", "{:.3f}"), ("prior", "prior", "{:.3f}"),
                                     ("count", "nodes", "{}")])
    print(f"{sum(counts.seen)} verified draft nodes, {sum(counts.accepted)} accepted, on {len(prompts)} prompts in "
          f"{seconds:.0f} s ({torch.get_num_threads()} threads)")
    command = " ".join(["python -m specdec_kernels.planner.calibration", *argv])
    written = save_prior(head, counts, args.out, model=os.path.basename(decoder.model_path),
                         prompts=len(prompts), max_new_tokens=args.max_new_tokens, seconds=round(seconds, 1),
                         command=command)
    print(f"wrote {written}")
    if args.plot:
        plot(counts, args.plot, f"{head_identity(head)['name']}\n{sum(counts.seen)} draft nodes verified "
             f"on {len(prompts)} held-out prompts")


if __name__ == "__main__":
    main()
