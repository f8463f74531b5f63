"""The canonical 4-bit weight form every importer produces and every backend prepacks from (docs/design.md
3.1), and a round-to-nearest quantizer into it."""
from dataclasses import dataclass

import torch

from specdec_kernels.reference import dequantize_w4, pack_int4

GROUP_SIZES = (32, 64, 128)


@dataclass
class QuantizedWeight:
    """W[n, k] = scales[n, k // G] * q[n, k] + mins[n, k // G]; q in 0..15.

    qweight: uint8 [N, K // 2] (k = 2j in the low nibble of byte j, k = 2j + 1 in the high one);
    scales, mins: [N, K // G] float16/bfloat16/float32.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor
    group_size: int

    def __post_init__(self):
        n, half_k = self.qweight.shape
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {self.group_size}")
        if self.qweight.dtype != torch.uint8:
            raise ValueError(f"qweight must be uint8 [N, K/2], got {self.qweight.dtype}")
        if (2 * half_k) % self.group_size:
            raise ValueError(f"K = {2 * half_k} must be a multiple of group_size {self.group_size}")
        expected = (n, 2 * half_k // self.group_size)
        for name in ("scales", "mins"):
            if tuple(getattr(self, name).shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(getattr(self, name).shape)}")

    @property
    def shape(self):
        return (self.qweight.shape[0], self.qweight.shape[1] * 2)


def quantize_rtn(weight: torch.Tensor, group_size: int = 128, symmetric: bool = False,
                 scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """Round-to-nearest 4-bit quantization of weight [N, K], per group of `group_size` along K."""
    n, k = weight.shape
    if group_size not in GROUP_SIZES or k % group_size:
        raise ValueError(f"K = {k} must be a multiple of group_size in {GROUP_SIZES}, got {group_size}")
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    if symmetric:
        scales = (w.abs().amax(-1) / 7.5).clamp(min=1e-8).to(scale_dtype)
        mins = -8 * scales
    else:
        lo, hi = w.amin(-1), w.amax(-1)
        scales = ((hi - lo) / 15).clamp(min=1e-8).to(scale_dtype)
        mins = lo.to(scale_dtype)
    q = ((w - mins.float()[..., None]) / scales.float()[..., None]).round().clamp(0, 15)
    return QuantizedWeight(pack_int4(q.reshape(n, k)), scales, mins, group_size)


def dequantize(qw: QuantizedWeight) -> torch.Tensor:
    """The float32 weight [N, K] a QuantizedWeight stands for."""
    return dequantize_w4(qw.qweight, qw.scales, qw.mins, qw.group_size)
