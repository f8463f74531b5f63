"""Measure what a speculative step's parts cost on this machine, once per machine, model and drafter, and keep
it in the user's cache folder.

The target's forward over T nodes is the curve that decides every choice (docs/design.md 4.9); the drafter's
two costs are per step (extend) and per tree level. A cached entry is used only when its key (CPU, ISA path,
threads, library version, the model's and the head's file identity) matches and its numbers are sane;
anything else is remeasured, never trusted.
"""
import json
import os
import sys
from itertools import accumulate
from dataclasses import asdict
from typing import Optional

import torch

from specdec_kernels import user_cache
from specdec_kernels.machine import cpu_description

from .policy import StepCosts

MAX_NODES = 16  # the largest tree the planner verifies (the costs beyond grow by about a T = 1 forward each)
CACHE_CONTEXT = 256  # tokens in the cache while timing: a typical prompt
# Rounds of timing go on for at least this long: a 2-second measurement on a busy 2-core machine once took a
# noisy moment for the truth (every forward 1.35x, the drafter's extend 2.8x too slow) and `auto` then grew
# trees for costs it did not pay.
MEASURE_SECONDS = 8.0
FORMAT = 2  # 2: the CPU named with its family and model (machine.cpu_description)


def cache_dir() -> str:
    return user_cache.cache_dir("costs")


def _file_identity(path: Optional[str]) -> Optional[list]:
    if path is None:
        return None
    if os.path.isdir(path):  # an EAGLE-3 head's folder: its weights identify it
        path = os.path.join(path, "model.safetensors")
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def cost_key(model_path: str, head_path: Optional[str]) -> dict:
    from specdec_kernels import __version__, _C

    return {"format": FORMAT, "cpu": cpu_description(), "isa": _C.cpu_isa(), "threads": torch.get_num_threads(),
            "version": __version__, "model": _file_identity(model_path), "head": _file_identity(head_path)}


def cache_path(key: dict) -> str:
    return os.path.join(cache_dir(), f"{user_cache.key_digest(key)}.json")


def load_cached(key: dict) -> Optional[StepCosts]:
    """The cached costs for `key`, or None when there are none or the entry is damaged or another key's."""
    try:
        with open(cache_path(key)) as f:
            entry = json.load(f)
        if entry["key"] != key:
            return None
        costs = entry["costs"]
        return StepCosts(tuple(float(ms) for ms in costs["forward_ms"]), float(costs["extend_ms"]),
                         float(costs["level_ms"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(key: dict, costs: StepCosts) -> str:
    path = cache_path(key)

    def write(temporary):
        with open(temporary, "w") as f:
            json.dump({"key": key, "costs": asdict(costs)}, f, indent=1)

    user_cache.write_atomic(path, write)
    return path


@torch.inference_mode()
def measure(target, drafter, max_nodes: int = MAX_NODES, context: int = CACHE_CONTEXT, repeats: int = 9,
            seconds: float = MEASURE_SECONDS) -> StepCosts:
    """Time the target's forward over 1..max_nodes nodes and the drafter's extend and tree level, interleaved (the
    median of at least `repeats` rounds and `seconds` in all), after `context` random tokens. Leaves the target's
    and the drafter's caches reset."""
    from specdec_kernels.bench.common import time_interleaved
    from specdec_kernels.bench.forward import chain_forward
    from specdec_kernels.decoding import forward_for
    from specdec_kernels.drafters import DraftShape

    if context + max_nodes > target.max_seq_len:
        raise ValueError(f"measuring costs needs {context + max_nodes} positions, the model has {target.max_seq_len}")
    target.setup_cache(1, target.max_seq_len) if target.cache_lens.shape[0] != 1 else target.reset()
    prompt = torch.randint(0, target.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    features = forward_for(target, drafter, prompt)[2]
    target.commit(context)
    drafter.reset()
    root_hidden, root_log_probs = drafter.extend(prompt[0, 1:], features[0, :-1])
    tail = prompt[0, -1:], features[0, -1:]

    def extend():  # a step's commit of one token, rolled back so that every call sees the same cache
        drafter.extend(*tail)
        drafter.truncate(drafter.length - 1)

    def grow(levels):
        return lambda: drafter.grow_tree(0, root_hidden, root_log_probs, DraftShape(1 + 4 * levels, levels, 4))

    calls = {t: chain_forward(target, t, seed=t) for t in range(1, max_nodes + 1)}
    calls.update({"extend": extend, "grow1": grow(1), "grow3": grow(3)})
    medians = time_interleaved(calls, repeats=repeats, min_time_s=seconds)
    target.reset()
    drafter.reset()
    ms = {name: s * 1e3 for name, s in medians.items()}
    forward_ms = tuple(accumulate((ms[t] for t in range(1, max_nodes + 1)), max))  # more nodes never cost less
    return StepCosts(forward_ms, ms["extend"], max((ms["grow3"] - ms["grow1"]) / 2, 1e-3))


def step_costs(target, drafter, model_path: str, head_path: Optional[str], recalibrate: bool = False) -> StepCosts:
    """The cached costs for this machine, model and head, measured (and cached) when missing, damaged or asked."""
    key = cost_key(model_path, head_path)
    costs = None if recalibrate else load_cached(key)
    if costs is None:
        print("specdec: measuring this machine's step costs for the planner (once; cached)...", file=sys.stderr,
              flush=True)
        costs = measure(target, drafter)
        save(key, costs)
    return costs
