"""W4A16 GEMM in Triton on the canonical format (docs/design.md 3.1): no prepack, one program per output tile
and K slice.

A k-block never straddles a quantization group (BLOCK_K divides G), so each block dequantizes with one
scale and one min per column: w = q * s + m (float32, then x's dtype), then one tl.dot with float32
accumulation. Small M is memory-bound and has few output tiles: the K range is split over SPLIT_K
programs whose float32 partials are summed in a fixed order (deterministic, unlike atomics).
"""
import os
from typing import Optional

import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.quant import GROUP_SIZES

with optional_imports():
    import triton
    import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    # H100: 4-5 stages of [BLOCK_N, BLOCK_K / 2] bytes + [BLOCK_M, BLOCK_K] activations fit easily in smem.
    return [triton.Config({"BLOCK_K": block_k}, num_warps=warps, num_stages=stages)
            for block_k in (32, 64, 128) for warps in (4, 8) for stages in (3, 4, 5)]


def _prune(configs, named_args, **kwargs):
    """BLOCK_K must divide the group size; the interpreter runs one config (benchmarking it is pointless)."""
    fitting = [c for c in configs if named_args["group_size"] % c.kwargs["BLOCK_K"] == 0]
    return fitting[:1] if _INTERPRET else fitting


@triton.autotune(configs=_configs(), key=["N", "K", "BLOCK_M", "SPLIT_K"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _w4a16_kernel(x_ptr, q_ptr, s_ptr, m_ptr, y_ptr, M, N, K, group_size, k_per_split,
                  stride_xm, stride_qn, stride_sn, stride_ys, stride_ym,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                  IEEE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_begin = tl.program_id(2) * k_per_split
    ks = tl.arange(0, BLOCK_K)
    bytes_ = tl.arange(0, BLOCK_K // 2)
    row_ok, col_ok = rows < M, cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_begin + k_per_split, BLOCK_K):
        x = tl.load(x_ptr + rows[:, None] * stride_xm + (k0 + ks)[None, :], mask=row_ok[:, None], other=0.0)
        packed = tl.load(q_ptr + cols[:, None] * stride_qn + (k0 // 2 + bytes_)[None, :], mask=col_ok[:, None],
                         other=0)
        # byte j: k = 2j in the low nibble, 2j + 1 in the high one -> [BLOCK_N, BLOCK_K] in k order
        q = tl.reshape(tl.join(packed & 15, packed >> 4), (BLOCK_N, BLOCK_K)).to(tl.float32)
        group = k0 // group_size
        scale = tl.load(s_ptr + cols * stride_sn + group, mask=col_ok, other=0.0).to(tl.float32)
        minimum = tl.load(m_ptr + cols * stride_sn + group, mask=col_ok, other=0.0).to(tl.float32)
        w = (q * scale[:, None] + minimum[:, None]).to(x.dtype)
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    out = y_ptr + tl.program_id(2) * stride_ys + rows[:, None] * stride_ym + cols[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def check_w4a16_args(x, qweight, scales, mins, group_size: int) -> None:
    """ValueError naming the argument unless the call fits docs/design.md 3.1."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
    if x.dim() != 2 or qweight.dim() != 2 or qweight.dtype != torch.uint8:
        raise ValueError(f"x must be [M, K] and qweight uint8 [N, K/2], got {tuple(x.shape)}, "
                         f"{tuple(qweight.shape)} {qweight.dtype}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if x.shape[1] != k or k % group_size:
        raise ValueError(f"x must be [M, {k}] with K a multiple of group_size {group_size}, got {tuple(x.shape)}")
    if scales.shape != (n, k // group_size) or mins.shape != scales.shape:
        raise ValueError(f"scales and mins must be [{n}, {k // group_size}], got {tuple(scales.shape)}, "
                         f"{tuple(mins.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if not (scales.is_floating_point() and mins.is_floating_point()):
        raise ValueError(f"scales and mins must be floating point, got {scales.dtype}, {mins.dtype}")
    if len({t.device for t in (x, qweight, scales, mins)}) != 1:
        raise ValueError(f"x, qweight, scales and mins must be on one device, got "
                         f"{[str(t.device) for t in (x, qweight, scales, mins)]}")


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _split_k(tiles: int, k: int, group_size: int, device: torch.device) -> int:
    """Enough K slices that the tiles fill about two waves of SMs; a slice is whole groups."""
    split = 1
    while tiles * split * 2 <= 2 * _multiprocessors(device) and split < 16 and (k // group_size) % (2 * split) == 0:
        split *= 2
    return split


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
               group_size: int, split_k: Optional[int] = None) -> torch.Tensor:
    """y = x @ W.T, W in the canonical 4-bit form (qweight uint8 [N, K/2], scales/mins [N, K/G]).
    x [M, K] (float16/bfloat16/float32) -> [M, N] in x.dtype. split_k (K slices, each whole groups) is
    chosen from the SM count when None."""
    check_w4a16_args(x, qweight, scales, mins, group_size)
    if split_k is not None and (split_k < 1 or (qweight.shape[1] * 2 // group_size) % split_k):
        raise ValueError(f"split_k must divide the number of groups K / G = {qweight.shape[1] * 2 // group_size}, "
                         f"got {split_k}")
    x, qweight, scales, mins = (t.contiguous() for t in (x, qweight, scales, mins))
    (m, k), n = x.shape, qweight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    # Small M: narrow tiles for more programs; large M: square-ish tiles for reuse of each weight tile.
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n = 64 if m <= 32 else 128
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    if split_k is None:
        split_k = _split_k(tiles, k, group_size, x.device) if m <= 32 else 1
    out = y if split_k == 1 else torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    _w4a16_kernel[grid](x, qweight, scales, mins, out, m, n, k, group_size, k // split_k, x.stride(0),
                        qweight.stride(0), scales.stride(0), out.stride(0) if split_k > 1 else 0, n,
                        BLOCK_M=block_m, BLOCK_N=block_n, SPLIT_K=split_k, IEEE=x.dtype == torch.float32)
    return y if split_k == 1 else out.sum(0).to(x.dtype)


# ---------------------------------------------------------------- the W4A16Linear pair (ops.w4a16_prepack/gemm)
def w4a16_prepack(qweight, scales, mins, group_size: int):
    """The kernel reads the canonical layout: prepacking only makes it contiguous, so that W4A16Linear holds
    (packed_qweight, packed_scales, packed_mins) for this backend as for the others."""
    return [t.contiguous() for t in (qweight, scales, mins)]


def w4a16_gemm(x, packed_qweight, packed_scales, packed_mins, group_size: int, out_features: int,
               x_digits: int = 3):
    """ops.w4a16_gemm's contract on w4a16_prepack's output: x [M, K] -> [M, out_features]. x_digits belongs to
    the CPU integer paths; this kernel multiplies x as given, as the other GPU paths do."""
    if packed_qweight.shape[0] != out_features:
        raise ValueError(f"out_features must be the rows of packed_qweight ({packed_qweight.shape[0]}), "
                         f"got {out_features}")
    return w4a16_matmul(x, packed_qweight, packed_scales, packed_mins, group_size)
