"""W4A16 GEMM: ours vs torch dense (fp32, bf16/fp16) and torch's int4 weight-only matmul, side by side."""
import torch

from specdec_kernels import ops, quant, reference
from specdec_kernels.bench.common import (
    CacheFlusher,
    copy_bandwidth,
    machine_info,
    matmul_peak,
    print_table,
    pyplot,
    time_interleaved,
    write_json,
)

SHAPES = [(4096, 4096, 128), (11008, 4096, 128), (4096, 11008, 128), (1536, 576, 32), (576, 1536, 32),
          (49152, 576, 32)]
BATCH = [1, 4, 16, 32, 64, 128]
QUICK_SHAPES, QUICK_BATCH = [(4096, 4096, 128), (1536, 576, 32)], [1, 16, 64]
GPU_SHAPES = [(8192, 8192, 128), (28672, 8192, 128)] + SHAPES[:3]  # H100-sized first


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true", help="a small set of points (the demo)")
    parser.add_argument("--json", help="write all points here")
    parser.add_argument("--plot", help="write a PNG of speedup against M here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=9)


def _torch_int4(w_int: torch.Tensor, qw: quant.QuantizedWeight, device):
    """torch's int4 weight-only matmul on the same weights: it computes W = (q - 8) * s + z, so z = m + 8 s."""
    scales = qw.scales.float().t()
    zeros = qw.mins.float().t() + 8 * scales
    scales_and_zeros = torch.stack([scales, zeros], dim=-1).contiguous().to(device, torch.bfloat16)
    try:
        if device.type == "cuda":
            packed = torch._convert_weight_to_int4pack(reference.pack_int4(w_int).to(device), 8)
            return lambda x: torch._weight_int4pack_mm(x, packed, qw.group_size, scales_and_zeros)
        packed = torch._convert_weight_to_int4pack_for_cpu(w_int.int(), 1)
        return lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, qw.group_size, scales_and_zeros)
    except (RuntimeError, AttributeError):  # shape or build not supported by this torch
        return None


def half_dtype(device: torch.device) -> torch.dtype:
    """The 16-bit activation dtype benchmarked on the device (CPU kernels take bf16, CUDA ones fp16)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def bench_point(n, k, group_size, m, device, repeats, bandwidth, peak, flush):
    weight = torch.randn(n, k) * 0.02
    qw = quant.quantize_rtn(weight, group_size)
    w_int = reference.unpack_int4(qw.qweight)
    packed = ops.w4a16_prepack(qw.qweight.to(device), qw.scales.to(device), qw.mins.to(device), group_size)
    half = half_dtype(device)
    dense = {torch.float32: quant.dequantize(qw).to(device)}
    dense[half] = dense[torch.float32].to(half)
    x = {dtype: torch.randn(m, k, device=device).to(dtype) for dtype in (torch.float32, half)}
    fns = {
        "ours_16": lambda: ops.w4a16_gemm(x[half], *packed, group_size, n),
        "ours_fp32": lambda: ops.w4a16_gemm(x[torch.float32], *packed, group_size, n),
        "dense_fp32": lambda: x[torch.float32] @ dense[torch.float32].T,
        "dense_16": lambda: x[half] @ dense[half].T,
    }
    if device.type == "cuda":
        fns.pop("ours_fp32")
    int4 = _torch_int4(w_int, qw, device)
    if int4 is not None:
        fns["torch_int4"] = lambda: int4(x[torch.bfloat16] if torch.bfloat16 in x else x[half].bfloat16())
    times = time_interleaved(fns, repeats=repeats, device=device, flush=flush)
    weight_bytes = sum(t.numel() * t.element_size() for t in packed)
    io_bytes = m * k * x[half].element_size() + m * n * x[half].element_size()
    ours = times["ours_16"]
    row = {"N": n, "K": k, "group_size": group_size, "M": m, **{f"{key}_ms": t * 1e3 for key, t in times.items()}}
    row["vs_dense_16"] = times["dense_16"] / ours
    row["vs_dense_fp32"] = times["dense_fp32"] / ours
    row["vs_torch_int4"] = times["torch_int4"] / ours if "torch_int4" in times else None
    row["memory_roofline"] = (weight_bytes + io_bytes) / bandwidth / ours
    row["compute_roofline"] = 2 * m * n * k / peak / ours
    row["roofline"] = max(row["memory_roofline"], row["compute_roofline"])
    return row


def plot(rows, path):
    plt = pyplot()

    shapes = sorted({(r["N"], r["K"]) for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(4 * len(shapes), 3.6), squeeze=False)
    for ax, (n, k) in zip(axes[0], shapes):
        points = [r for r in rows if (r["N"], r["K"]) == (n, k)]
        ms = [r["M"] for r in points]
        for key, label in (("vs_dense_16", "vs dense 16-bit"), ("vs_dense_fp32", "vs dense fp32"),
                           ("vs_torch_int4", "vs torch int4")):
            if all(r[key] is not None for r in points):
                ax.plot(ms, [r[key] for r in points], marker="o", label=label)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"N={n} K={k}")
        ax.set_xlabel("M (rows)")
    axes[0][0].set_ylabel("speedup of ours (x)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def run(args):
    device = torch.device(args.device)
    shapes, batch = (QUICK_SHAPES, QUICK_BATCH) if args.quick else (SHAPES, BATCH)
    if device.type == "cuda" and not args.quick:
        shapes = GPU_SHAPES
    # The compute ceiling: the faster of fp32 and 16-bit dense matmul (AMX / tensor cores run the 16-bit one).
    bandwidth, peak = copy_bandwidth(device), max(matmul_peak(device), matmul_peak(device, half_dtype(device)))
    info = machine_info(device)
    print(f"# W4A16 GEMM on {info.get('device_name', info['cpu'])} ({info['cpu_isa']}, {info['threads']} threads); "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, matmul peak {peak / 1e9:.0f} GFLOP/s (best of fp32, 16-bit)")
    flush = CacheFlusher(device)
    rows = [bench_point(n, k, g, m, device, args.repeats, bandwidth, peak, flush) for n, k, g in shapes for m in batch]
    half = "fp16" if device.type == "cuda" else "bf16"
    print_table(rows, [("N", "N", "{}"), ("K", "K", "{}"), ("M", "M", "{}"), ("ours_16_ms", f"ours {half} ms", "{:.3f}"),
                       ("ours_fp32_ms", "ours fp32 ms", "{:.3f}"), ("dense_16_ms", f"dense {half} ms", "{:.3f}"),
                       ("dense_fp32_ms", "dense fp32 ms", "{:.3f}"), ("torch_int4_ms", "torch int4 ms", "{:.3f}"),
                       ("vs_dense_16", f"x {half}", "{:.2f}"), ("vs_dense_fp32", "x fp32", "{:.2f}"),
                       ("vs_torch_int4", "x int4", "{:.2f}"), ("roofline", "roofline", "{:.0%}")])
    payload = {"machine": info, "copy_bandwidth_GBps": bandwidth / 1e9, "matmul_peak_GFLOPs": peak / 1e9,
               "points": rows}
    if args.json:
        write_json(args.json, payload)
    if args.plot:
        plot(rows, args.plot)
    return 0
