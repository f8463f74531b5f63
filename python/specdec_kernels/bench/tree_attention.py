"""Tree attention: ours vs torch scaled_dot_product_attention with a dense mask over the whole cache."""
import torch

from specdec_kernels import ops, tree
from specdec_kernels.bench.common import (copy_bandwidth, machine_info, matmul_peak, print_table, time_interleaved,
                                          write_json)

HEADS = {"smollm2": (9, 3, 64), "llama3-8b": (32, 8, 128)}
TOKENS, CACHES = [1, 8, 32, 64], [512, 2048, 8192]


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="T in {1, 64}, cache 2048, SmolLM2 heads")
    parser.add_argument("--json", help="write all points here")
    parser.add_argument("--repeats", type=int, default=7)


def random_tree_mask(t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(max(0, i - 8), i, (1,), generator=g)) for i in range(1, t)]
    return tree.pack_tree_mask(torch.tensor([parents]))


def bench_point(model, t, cache_len, repeats, bandwidth, peak):
    hq, hkv, d = HEADS[model]
    s = cache_len + t
    q = torch.randn(1, t, hq, d)
    k, v = torch.randn(1, s, hkv, d), torch.randn(1, s, hkv, d)
    lens = torch.tensor([cache_len], dtype=torch.int32)
    mask = random_tree_mask(t, seed=t)
    # SDPA in its preferred layout [B, H, S, D] with a dense boolean mask over cache + new tokens.
    bits = torch.arange(t)
    new_visible = ((mask[0][:, bits // 64] >> (bits % 64)) & 1).bool()
    dense = torch.cat([torch.ones(t, cache_len, dtype=torch.bool), new_visible], 1)
    qs, ks, vs = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    times = time_interleaved({
        "ours": lambda: ops.tree_attention(q, k, v, lens, mask),
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=dense, enable_gqa=True),
    }, repeats=repeats)
    kv_bytes = 2 * s * hkv * d * 4
    flops = 4 * t * hq * s * d
    ours = times["ours"]
    return {"model": model, "T": t, "cache": cache_len, "ours_ms": ours * 1e3, "sdpa_ms": times["sdpa"] * 1e3,
            "vs_sdpa": times["sdpa"] / ours, "kv_GBps": kv_bytes / ours / 1e9, "GFLOPs": flops / ours / 1e9,
            "roofline": max(kv_bytes / bandwidth, flops / peak) / ours}


def run(args):
    bandwidth, peak = copy_bandwidth(), matmul_peak()
    info = machine_info(torch.device("cpu"))
    print(f"# tree attention, {info['cpu_isa']}, {info['threads']} threads; copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"fp32 matmul {peak / 1e9:.0f} GFLOP/s")
    points = ([("smollm2", t, 2048) for t in (1, 64)] if args.quick else
              [(m, t, c) for m in HEADS for c in CACHES for t in TOKENS])
    rows = [bench_point(m, t, c, args.repeats, bandwidth, peak) for m, t, c in points]
    print_table(rows, [("model", "heads", "{}"), ("T", "T", "{}"), ("cache", "cache", "{}"),
                       ("ours_ms", "ours ms", "{:.3f}"), ("sdpa_ms", "sdpa ms", "{:.3f}"), ("vs_sdpa", "x sdpa", "{:.2f}"),
                       ("kv_GBps", "KV GB/s", "{:.1f}"), ("GFLOPs", "GFLOP/s", "{:.0f}"), ("roofline", "roofline", "{:.0%}")])
    if args.json:
        write_json(args.json, {"machine": info, "copy_bandwidth_GBps": bandwidth / 1e9,
                               "matmul_peak_GFLOPs": peak / 1e9, "points": rows})
    return 0
