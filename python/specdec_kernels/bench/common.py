"""Shared benchmark helpers: timing, the machine's measured ceilings, tables, JSON and plots.

The machine these run on is shared and noisy, so every benchmark interleaves the backends it compares
(round-robin over repeats) and reports ratios measured side by side.
"""
import json
import statistics
import time
from typing import Callable, Dict, Optional

import torch

from specdec_kernels.machine import cpu_description


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def last_level_cache_bytes() -> int:
    """The CPU's largest cache as sysfs reports it (0 when unknown)."""
    import glob

    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(path) as f:
            text = f.read().strip()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=0)


class CacheFlusher:
    """Writes a buffer larger than the last-level cache, so that each timed call streams its weights
    from memory as it would inside a model too large for the cache (and not from the previous call).
    CPU: twice the last-level cache (some machines have 480 MiB of L3), at least 96 MiB."""

    def __init__(self, device: torch.device, megabytes: Optional[int] = None):
        if megabytes is None:
            megabytes = 96 if device.type == "cuda" else max(96, 2 * last_level_cache_bytes() // 2**20)
        self.buffer = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device)

    def __call__(self):
        self.buffer.zero_()


def time_interleaved(fns: Dict[str, Callable], repeats: int = 15, warmup: int = 3,
                     device: torch.device = torch.device("cpu"), min_time_s: float = 0.0,
                     flush: Optional[Callable] = None) -> Dict[str, float]:
    """Median seconds of each fn, measured round-robin so that machine noise hits all of them alike;
    `flush` (untimed) runs before every timed call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        for name, fn in fns.items():
            if flush is not None:
                flush()
                _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
        done = len(next(iter(samples.values())))
        if done >= repeats and time.perf_counter() - start >= min_time_s:
            break
    return {name: statistics.median(ts) for name, ts in samples.items()}


def best_seconds(fn: Callable, repeats: int, device: torch.device) -> float:
    """The fastest of `repeats` runs: a ceiling is what the machine can do, not its typical noisy moment."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(device: torch.device = torch.device("cpu"), megabytes: int = 256) -> float:
    """Measured memory bandwidth in bytes/s: a large tensor copy (read + write) that misses the caches."""
    src = torch.empty(megabytes * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), 10, device)


def matmul_peak(device: torch.device = torch.device("cpu"), dtype=torch.float32, size: int = 2048) -> float:
    """Measured dense matmul throughput in FLOP/s (the compute ceiling for roofline fractions)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / best_seconds(lambda: a @ b, 10, device)


def machine_info(device: torch.device) -> dict:
    from specdec_kernels import _C

    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "cpu": cpu_description(), "cpu_isa": _C.cpu_isa()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend: no display needed); matplotlib is in [bench]."""
    from specdec_kernels.extras import optional_imports

    with optional_imports():
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def print_table(rows, columns):
    """rows: list of dicts; columns: list of (key, header, format)."""
    cells = [[header for _, header, _ in columns]]
    cells += [[("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for i, line in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * width for width in widths))


def write_json(path: str, payload: dict):
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {path}")
