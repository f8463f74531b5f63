"""Tree ops on a GPU: CUDA and Triton kernels vs torch baselines, side by side, timed with CUDA events.

    specdec bench gpu-tree --json tree_gpu.json [--quick]

Tree attention (the shapes of bench.tree_attention, fp16): ours (CUDA), Triton, and torch SDPA over the
whole cache with a dense mask (enable_gqa); KV bytes / time as a fraction of the measured copy bandwidth.
Verification (the trees of bench.verify): the fused ops (CUDA, Triton) vs the naive procedure (every row
reduced, then the paths enumerated). Each timed call starts with a cold L2 (a 96 MiB buffer is written
first, untimed), and the GPU time between two events around the call counts, host waits included.
"""
import statistics

import torch

from specdec_kernels import ops
from specdec_kernels.bench.common import CacheFlusher, copy_bandwidth, machine_info, print_table, write_json
from specdec_kernels.bench.tree_attention import CACHES, HEADS, TOKENS, random_tree_mask
from specdec_kernels.bench.verify import VOCABS, eagle_like_tree, leaf_paths, naive_greedy, naive_sample

VERIFY_TOKENS = [8, 32, 64, 128]


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="T in {1, 64}, cache 4096; verify T = 64, V = 49152")
    parser.add_argument("--json", help="write all points here")
    parser.add_argument("--repeats", type=int, default=25)


def event_times(fns, repeats, flush):
    """Median milliseconds of each fn, interleaved round-robin; flush() (untimed) before every call."""
    for fn in fns.values():
        fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end))
    return {name: statistics.median(ms) for name, ms in samples.items()}


def triton_ops():
    try:
        from specdec_kernels import triton as tk

        return tk
    except ImportError:
        return None


def attention_point(model, t, cache_len, repeats, bandwidth, flush, tk):
    hq, hkv, d = HEADS[model]
    s = cache_len + t
    q = torch.randn(1, t, hq, d, device="cuda", dtype=torch.float16)
    k = torch.randn(1, s, hkv, d, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    lens = torch.tensor([cache_len], dtype=torch.int32, device="cuda")
    mask = random_tree_mask(t, seed=t).cuda()
    bits = torch.arange(t, device="cuda")
    new_visible = ((mask[0][:, bits // 64] >> (bits % 64)) & 1).bool()
    dense = torch.cat([torch.ones(t, cache_len, dtype=torch.bool, device="cuda"), new_visible], 1)
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    fns = {
        "ours": lambda: ops.tree_attention(q, k, v, lens, mask),
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=dense, enable_gqa=True),
    }
    if tk is not None:
        fns["triton"] = lambda: tk.tree_attention(q, k, v, lens, mask)
    times = event_times(fns, repeats, flush)
    kv_bytes = 2 * s * hkv * d * 2
    row = {"model": model, "T": t, "cache": cache_len, **{f"{name}_us": ms * 1e3 for name, ms in times.items()}}
    row["vs_sdpa"] = times["sdpa"] / times["ours"]
    row["kv_GBps"] = kv_bytes / (times["ours"] * 1e-3) / 1e9
    row["bandwidth_fraction"] = kv_bytes / bandwidth / (times["ours"] * 1e-3)
    return row


def verify_point(t, vocab, repeats, flush, tk):
    tokens, parents = eagle_like_tree(t, seed=t)
    logits = torch.randn(1, t, vocab)
    for c in range(1, t):  # the target agrees with the draft about half the time
        if c % 2:
            logits[0, parents[0, c], tokens[0, c]] += 20
    paths = leaf_paths(parents)
    tokens, parents, logits, uniforms = tokens.cuda(), parents.cuda(), logits.cuda(), torch.rand(1, t + 1).cuda()
    fns = {
        "greedy": lambda: ops.tree_verify_greedy(tokens, parents, logits),
        "naive_greedy": lambda: naive_greedy(tokens, logits, paths.cuda()),
        "sample": lambda: ops.tree_verify_sample(tokens, parents, logits, 1.0, top_k=20, uniforms=uniforms),
        "naive_sample": lambda: naive_sample(tokens, logits, paths.cuda(), 1.0, uniforms),
    }
    if tk is not None:
        fns["triton_greedy"] = lambda: tk.tree_verify_greedy(tokens, parents, logits)
        fns["triton_sample"] = lambda: tk.tree_verify_sample(tokens, parents, logits, uniforms, 1.0, 1.0, 20)
    times = event_times(fns, repeats, flush)
    return {"T": t, "V": vocab, **{f"{name}_us": ms * 1e3 for name, ms in times.items()},
            "greedy_speedup": times["naive_greedy"] / times["greedy"],
            "sample_speedup": times["naive_sample"] / times["sample"],
            "accept_len": int(ops.tree_verify_greedy(tokens, parents, logits)[1][0])}


def run(args):
    device = torch.device("cuda")
    bandwidth = copy_bandwidth(device)
    info = machine_info(device)
    flush, tk = CacheFlusher(device), triton_ops()
    print(f"# tree ops on {info['device_name']}; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    attention = ([("llama3-8b", t, 4096) for t in (1, 64)] if args.quick else
                 [(m, t, c) for m in HEADS for c in CACHES + [4096] for t in TOKENS])
    attention_rows = [attention_point(m, t, c, args.repeats, bandwidth, flush, tk) for m, t, c in attention]
    print_table(attention_rows, [("model", "heads", "{}"), ("T", "T", "{}"), ("cache", "cache", "{}"),
                                 ("ours_us", "ours us", "{:.1f}"), ("triton_us", "triton us", "{:.1f}"),
                                 ("sdpa_us", "sdpa us", "{:.1f}"), ("vs_sdpa", "x sdpa", "{:.2f}"),
                                 ("kv_GBps", "KV GB/s", "{:.0f}"), ("bandwidth_fraction", "of bw", "{:.0%}")])
    verify = [(64, 49152)] if args.quick else [(t, v) for v in VOCABS for t in VERIFY_TOKENS]
    verify_rows = [verify_point(t, v, args.repeats, flush, tk) for t, v in verify]
    print_table(verify_rows, [("T", "T", "{}"), ("V", "V", "{}"), ("greedy_us", "greedy us", "{:.1f}"),
                              ("triton_greedy_us", "triton us", "{:.1f}"), ("naive_greedy_us", "naive us", "{:.1f}"),
                              ("greedy_speedup", "x naive", "{:.1f}"), ("sample_us", "sample us", "{:.1f}"),
                              ("triton_sample_us", "triton us", "{:.1f}"), ("naive_sample_us", "naive us", "{:.1f}"),
                              ("sample_speedup", "x naive", "{:.1f}"), ("accept_len", "accepted", "{}")])
    if args.json:
        write_json(args.json, {"machine": info, "copy_bandwidth_GBps": bandwidth / 1e9,
                               "tree_attention": attention_rows, "verify": verify_rows})
    return 0
