"""Linear layers the loaders build besides W4A16Linear: dense (batch-invariant), and sums of 4-bit planes."""
from typing import Optional

import torch
from torch import nn

from specdec_kernels.quant import W4A16Linear, quantize_rtn


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
