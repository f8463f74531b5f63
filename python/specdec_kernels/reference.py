"""Pure-PyTorch oracles for every op: readable, slow, exact. Backends are tested against these."""
import torch


# ---------------------------------------------------------------- W4A16 (DESIGN 3.1)
def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int [N, K]: byte j holds k = 2j in the low nibble, k = 2j + 1 in the high."""
    low = qweight & 0x0F
    high = qweight >> 4
    return torch.stack([low, high], dim=-1).reshape(qweight.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int [N, K] in 0..15 -> uint8 [N, K/2] (inverse of unpack_int4)."""
    q = q.to(torch.uint8).reshape(q.shape[0], -1, 2)
    return q[..., 0] | (q[..., 1] << 4)


def dequantize_w4(qweight, scales, mins, group_size: int) -> torch.Tensor:
    """W[n, k] = scales[n, k // G] * q[n, k] + mins[n, k // G], in float32."""
    q = unpack_int4(qweight).float()
    s = scales.float().repeat_interleave(group_size, dim=1)
    m = mins.float().repeat_interleave(group_size, dim=1)
    return q * s + m


def w4a16_gemm(x, qweight, scales, mins, group_size: int) -> torch.Tensor:
    """y = x @ W.T computed in float64 (the oracle), returned in x's dtype. x: [..., K] -> [..., N]."""
    w = dequantize_w4(qweight, scales, mins, group_size).double()
    return (x.double() @ w.T).to(x.dtype)
