"""Target forward cost per verified tree size: the runner's forward over T draft nodes against its T = 1 forward.

This ratio decides which draft trees pay on a machine. A step that verifies T nodes and emits tau tokens
(tokens per forward) runs at about tau / (forward(T) / forward(1)) times plain decoding, before drafting costs:
the table shows the tau each T needs for `--target-speedup`. Where the GEMMs are bandwidth-bound (a GPU, or
a CPU with many cores per byte of weights) the ratio stays near 1 for dozens of nodes; where they are
compute-bound it grows with every node. All sizes run interleaved in one process on the same cache; the
memory roofline is the packed weights' bytes over the measured copy bandwidth.

A second table splits the forward of a few T (`--stages`) into its ops, from torch's profiler: each of our
ops (GEMMs named by their weight's N x K), torch's own ops together, and the time outside any op (Python,
dispatch). The profiler costs several microseconds per op, so the stages sum to more than the forward alone
(its last row, from the first table): read which stages grow with T.
"""
import os
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile

from specdec_kernels import tree
from specdec_kernels.bench.common import (
    copy_bandwidth,
    machine_info,
    print_table,
    time_interleaved,
    write_json,
)

TOKENS = (1, 2, 3, 4, 5, 6, 8, 12, 16)
STAGE_TOKENS = (1, 4, 16)


def add_arguments(parser):
    from specdec_kernels.cli.args import token_counts

    parser.add_argument("--model", help="a GGUF file or a Hugging Face directory (default: the embedded model)")
    parser.add_argument("--tokens", type=token_counts, default=list(TOKENS), help="tree sizes T (comma-separated)")
    parser.add_argument("--cache", type=int, default=200, help="tokens already in the cache (a prompt)")
    parser.add_argument("--target-speedup", type=float, default=1.5)
    parser.add_argument("--x-digits", type=int, default=None, help="activation digits of the GEMMs "
                        "(default: models.RUNNER_X_DIGITS)")
    parser.add_argument("--stages", type=token_counts, default=list(STAGE_TOKENS), help="the T whose forward is split "
                        "into its ops (comma-separated; '' for none)")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--json", help="write the points here")


def check_fits(model, cache: int, sizes) -> None:
    if sizes and cache + max(sizes) > model.max_seq_len:
        raise ValueError(f"cache {cache} + T {max(sizes)} exceeds the model's {model.max_seq_len} positions")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a forward streams from its packed layers (weights, scales, mins); the embedding rows are few."""
    return sum(t.numel() * t.element_size() for m in model.modules() for t in (getattr(m, "packed", None) or ()))


def chain_forward(model, t: int, seed: int):
    """A forward over a chain of t random tokens after the cache (a tree's cost depends on T, not its shape)."""
    tokens = torch.randint(0, model.config.vocab_size, (1, t), generator=torch.Generator().manual_seed(seed))
    if t == 1:
        return lambda: model(tokens)
    draft = tree.DraftTree.chain(tokens)
    positions, mask = draft.positions(model.cache_lens), draft.mask()
    return lambda: model(tokens, positions, mask)


@torch.inference_mode()
def measure(model, sizes, cache: int, repeats: int, bandwidth: float, target_speedup: float) -> list:
    """-> one row per T: ms, the ratio to T = 1, the tokens per forward that T needs for target_speedup."""
    check_fits(model, cache, sizes)
    sizes = sorted(set(sizes) | {1})
    model.setup_cache(1, model.max_seq_len) if model.cache_lens.shape[0] != 1 else model.reset()
    if cache:
        prompt = torch.randint(0, model.config.vocab_size, (1, cache), generator=torch.Generator().manual_seed(0))
        model(prompt, logits_to_keep=1)
        model.commit(cache)
    times = time_interleaved({t: chain_forward(model, t, seed=t) for t in sizes}, repeats=repeats)
    base, bytes_read = times[1], weight_bytes(model)
    return [{"T": t, "ms": s * 1e3, "vs_T1": s / base, "tokens_per_forward_needed": target_speedup * s / base,
             "memory_roofline": bytes_read / bandwidth / s} for t, s in times.items()]


def stage_name(event) -> str:
    """A profiled op -> its stage: our GEMMs by weight shape (N x K, N padded to whole tiles), our other ops by
    name, torch's own ops (views, allocation) together."""
    namespace, _, name = event.key.partition("::")
    if namespace != "specdec":
        return "torch ops (views, allocation)"
    if name.endswith("_gemm"):
        x, packed = event.input_shapes[0], event.input_shapes[1]
        return f"{name.split('_')[0].upper()} {packed[0] * packed[2]} x {x[1]}"
    return name


@contextmanager
def kineto_lines_dropped():
    """torch's profiler (kineto) writes two trace lines to file descriptor 2 per session, past Python's sys.stderr
    and any setting found; they would split the tables, so descriptor 2 points to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.inference_mode()
def stage_times(model, sizes, repeats: int) -> dict:
    """-> {T: {stage: ms per forward}} over `repeats` profiled forwards at the model's current cache; "outside
    ops" is the wall time no op accounts for."""
    check_fits(model, int(model.cache_lens[0]), sizes)
    result = {}
    for t in sizes:
        forward = chain_forward(model, t, seed=t)
        forward()
        with kineto_lines_dropped(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiled:
            start = time.perf_counter()
            for _ in range(repeats):
                forward()
            wall = time.perf_counter() - start
        stages = defaultdict(float)
        for event in profiled.key_averages(group_by_input_shape=True):
            stages[stage_name(event)] += event.self_cpu_time_total / 1e3 / repeats
        stages["outside ops (Python, dispatch)"] = max(wall * 1e3 / repeats - sum(stages.values()), 0.0)
        result[t] = dict(sorted(stages.items(), key=lambda item: -item[1]))
    return result


def print_stages(stages: dict, unprofiled: dict):
    """unprofiled: {T: ms} of the first table, beside the profiled total (the profiler's own cost is the gap)."""
    sizes = list(stages)
    names = list(stages[sizes[-1]])  # the largest T's order: where the growth is
    rows = [{"stage": name, **{f"T{t}": stages[t].get(name, 0.0) for t in sizes}} for name in names]
    rows.append({"stage": "total", **{f"T{t}": sum(stages[t].values()) for t in sizes}})
    rows.append({"stage": "the forward without the profiler", **{f"T{t}": unprofiled.get(t) for t in sizes}})
    print_table(rows, [("stage", "stage (ms per forward, profiled)", "{}")] +
                [(f"T{t}", f"T = {t}", "{:.3f}") for t in sizes])


def run(args):
    from specdec_kernels.cli.args import UsageError
    from specdec_kernels.models import RUNNER_X_DIGITS, embedded_model_path, load_model

    path = args.model or embedded_model_path()
    model = load_model(path, x_digits=args.x_digits or RUNNER_X_DIGITS)
    bandwidth = copy_bandwidth()
    info = machine_info(torch.device("cpu"))
    try:
        check_fits(model, args.cache, args.tokens + args.stages)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"# runner forward over T tree nodes, {info['cpu_isa']}, {info['threads']} threads, cache {args.cache}; "
          f"{weight_bytes(model) / 2**20:.0f} MiB of packed weights, copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"median of {args.repeats} interleaved runs")
    rows = measure(model, args.tokens, args.cache, args.repeats, bandwidth, args.target_speedup)
    print_table(rows, [("T", "T", "{}"), ("ms", "ms", "{:.2f}"), ("vs_T1", "x T=1", "{:.2f}"),
                       ("tokens_per_forward_needed", f"tokens/forward for {args.target_speedup}x", "{:.2f}"),
                       ("memory_roofline", "memory roofline", "{:.0%}")])
    stages = stage_times(model, args.stages, args.repeats)
    if stages:
        print()
        print_stages(stages, {row["T"]: row["ms"] for row in rows})
    if args.json:
        write_json(args.json, {"machine": info, "model": path, "cache": args.cache, "copy_bandwidth_GBps": bandwidth / 1e9,
                               "weight_bytes": weight_bytes(model), "target_speedup": args.target_speedup,
                               "points": rows, "stage_ms": {str(t): v for t, v in stages.items()}})
    return 0
