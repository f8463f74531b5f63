"""Linear layers the loaders build besides W4A16Linear: 8-bit (a Q8_0 output head), dense (batch-invariant),
and sums of 4-bit planes."""
from typing import Optional

import torch
from torch import nn

from specdec_kernels import ops
from specdec_kernels.quant import PackedLayer, QuantizedWeight, W4A16Linear, apply_packed, quantize_rtn, set_x_digits
from specdec_kernels.reference import pack_int4


class SumOfLinears(nn.Module):
    """y = sum of the parts' outputs (a Q8_0 matrix as two 4-bit planes)."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x):
        y = self.parts[0](x)
        for part in self.parts[1:]:
            y += part(x)  # in place: y is this call's own fresh output
        return y


class W8A16Linear(PackedLayer):
    """y = x @ W.T + bias, W[n, k] = scales[n, k // G] * q[n, k] + mins[n, k // G], q uint8 [N, K] (0..255).

    One byte per weight through w8a16_gemm on CPU (with VNNI one integer dot product per 4 weights); elsewhere
    (CUDA) two exact 4-bit planes, q = 16 hi + lo: W = (16 scales) hi + mins + scales lo (twice the dot
    products and 1.5x the bytes). The path is chosen when the module is built or moved."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
                 bias: Optional[torch.Tensor] = None):
        super().__init__()
        if qweight.dtype != torch.uint8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be uint8 [N, K], got {qweight.dtype} {tuple(qweight.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.group_size = group_size
        self.x_digits = 3  # as W4A16Linear's (the planes get theirs from quant.set_x_digits too)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("mins", mins)
        self.register_buffer("bias", bias)
        self._prepack()

    def _pack(self):
        self.packed = self.planes = None
        if ops.w8a16_supported(self.qweight.device):
            self.packed = ops.w8a16_prepack(self.qweight, self.scales, self.mins, self.group_size)
            return
        q, s = self.qweight, self.scales
        hi = QuantizedWeight(pack_int4(q >> 4), 16 * s, self.mins, self.group_size)
        lo = QuantizedWeight(pack_int4(q & 15), s, torch.zeros_like(s), self.group_size)
        self.planes = set_x_digits(SumOfLinears([W4A16Linear(hi, self.bias), W4A16Linear(lo)]), self.x_digits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.planes is not None:
            return self.planes(x)
        return apply_packed(self, ops.w8a16_gemm, x)

    def extra_repr(self) -> str:
        path = "w8a16_gemm" if self.planes is None else "two 4-bit planes"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, "
                f"x_digits={self.x_digits}, {path}")


class RowwiseLinear(nn.Module):
    """A dense float32 layer computed one row at a time (matrix-vector products): torch's matmul picks
    different kernels for different M, so it is not batch-invariant; a row-by-row product is."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        y = torch.stack([torch.mv(self.weight, row) for row in rows]) if rows.shape[0] else rows.new_empty(0, 0)
        y = y.reshape(*x.shape[:-1], self.weight.shape[0])
        return y if self.bias is None else y + self.bias


def dense_linear(weight: torch.Tensor, bias: Optional[torch.Tensor], group_size: Optional[int]) -> nn.Module:
    """A float matrix as a layer: kept dense (group_size None) or RTN-quantized to 4 bits in groups of group_size."""
    if group_size is None:
        return RowwiseLinear(weight, bias)
    return W4A16Linear(quantize_rtn(weight, group_size), bias)
