"""W4A16 GEMM in Triton on the canonical format (DESIGN 3.1): no prepack, one program per output tile.

A k-block never straddles a quantization group (BLOCK_K divides G), so each block dequantizes with one
scale and one min per column: w = q * s + m, then one tl.dot with float32 accumulation.
"""
import torch
import triton
import triton.language as tl

from specdec_kernels.quant import GROUP_SIZES


@triton.jit
def _w4a16_kernel(x_ptr, q_ptr, s_ptr, m_ptr, y_ptr, M, N, K, group_size, stride_xm, stride_qn, stride_sn, stride_ym,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    bytes_ = tl.arange(0, BLOCK_K // 2)
    row_ok, col_ok = rows < M, cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
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
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
               group_size: int) -> torch.Tensor:
    """y = x @ W.T, W in the canonical 4-bit form. x [M, K] (float16/bfloat16/float32) -> [M, N] in x.dtype."""
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
    if len({t.device for t in (x, qweight, scales, mins)}) != 1:
        raise ValueError("x, qweight, scales and mins must be on one device")
    x, qweight, scales, mins = (t.contiguous() for t in (x, qweight, scales, mins))
    m = x.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n, block_k = 64, min(group_size, 64)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _w4a16_kernel[grid](x, qweight, scales, mins, y, m, n, k, group_size, x.stride(0), qweight.stride(0),
                        scales.stride(0), y.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                        IEEE=x.dtype == torch.float32, num_warps=4, num_stages=3)
    return y
