"""The linear layers the runner and the drafter multiply with: 4-bit (W4A16Linear), 8-bit (W8A16Linear, a Q8_0
output head), sums of 4-bit planes, and a batch-invariant dense layer. Each packed layer keeps the canonical
form as buffers and its backend's prepacked layout beside it."""
from typing import Optional

import torch
from torch import nn

from specdec_kernels import ops
from specdec_kernels.reference import dequantize_w8, pack_int4

from .formats import GROUP_SIZES, QuantizedWeight, dequantize, quantize_rtn

# Counts changes to what fused forms of a model read from its packed layers (the prepacked tensors, x_digits)
# and from its blocks (models.llama's C++ DecoderStack): it remakes itself when the count has moved.
_layout_changes = 0


def layout_changes() -> int:
    return _layout_changes


def note_layout_change() -> None:
    global _layout_changes
    _layout_changes += 1


class PackedLayer(torch.nn.Module):
    """A layer whose weight lives in its backend's prepacked layout (`packed`, made by `_pack` when the layer
    is built or moved) and that multiplies its activations with `x_digits` digits."""

    def _prepack(self):
        self._pack()
        note_layout_change()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._prepack()
        return self

    @property
    def x_digits(self) -> int:
        return self._x_digits

    @x_digits.setter
    def x_digits(self, value: int):
        self._x_digits = value
        note_layout_change()


def set_x_digits(module: torch.nn.Module, x_digits: int) -> torch.nn.Module:
    """Every packed layer in `module` multiplies its activations with x_digits digits (ops.w4a16_gemm)."""
    if x_digits not in (1, 2, 3):
        raise ValueError(f"x_digits must be 1, 2 or 3, got {x_digits}")
    for layer in module.modules():
        if hasattr(layer, "x_digits"):
            layer.x_digits = x_digits
    return module


def apply_packed(layer: torch.nn.Module, gemm, x: torch.Tensor) -> torch.Tensor:
    """y = gemm(x, *layer.packed, ...) + bias over x [..., in_features], for a layer holding a packed weight
    (in_features, out_features, group_size, x_digits, packed, a `bias` buffer)."""
    if x.shape[-1] != layer.in_features:
        raise ValueError(f"x must end in in_features = {layer.in_features}, got shape {tuple(x.shape)}")
    # 2-D x (the runner's activations) skips both reshapes: at decoding sizes every microsecond counts
    rows = x if x.dim() == 2 else x.reshape(-1, layer.in_features)
    y = gemm(rows, *layer.packed, layer.group_size, layer.out_features, layer.x_digits)
    y = y if x.dim() == 2 else y.view(*x.shape[:-1], layer.out_features)
    bias = layer._buffers["bias"]  # a direct read: nn.Module.__getattr__ costs ~0.6 us
    return y if bias is None else y + bias.to(y.dtype)


class W4A16Linear(PackedLayer):
    """y = x @ W.T + bias with W held in 4 bits. Keeps the canonical form as buffers (state_dict,
    .to()) and its backend's prepacked layout beside it, re-packed whenever the module moves."""

    def __init__(self, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = qw.shape
        self.group_size = qw.group_size
        self.x_digits = 3  # of the CPU integer paths (ops.w4a16_gemm); set_x_digits changes it
        self.register_buffer("qweight", qw.qweight)
        self.register_buffer("scales", qw.scales)
        self.register_buffer("mins", qw.mins)
        self.register_buffer("bias", bias)
        self._prepack()

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None) -> "W4A16Linear":
        return cls(qw, bias)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, group_size: int = 128, symmetric: bool = False) -> "W4A16Linear":
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(quantize_rtn(linear.weight, group_size, symmetric), bias)

    def _pack(self):
        self.packed = ops.w4a16_prepack(self.qweight, self.scales, self.mins, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_packed(self, ops.w4a16_gemm, x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, "
                f"x_digits={self.x_digits}")


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
        if self.group_size not in GROUP_SIZES:  # groups of 16 (GGUF Q6_K) exist only in w8a16_gemm
            raise ValueError(f"8-bit weights in groups of {self.group_size} run on the CPU only (w8a16_gemm)")
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
    different kernels for different M, so it is not batch-invariant; a row-by-row product is. torch.mv also
    sums in an order that depends on the weight's address (seen on AVX2, Zen 3), so a weight that does not start
    on a 64-byte line (a view of a mapped file) is copied, once, to one that does, as a fresh allocation is."""

    ALIGNMENT = 64

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x):
        if not torch.compiler.is_compiling() and self.weight.data_ptr() % self.ALIGNMENT:
            self.weight = self.weight.clone()
        rows = x.reshape(-1, x.shape[-1])
        y = torch.stack([torch.mv(self.weight, row) for row in rows]) if rows.shape[0] else rows.new_empty(0, 0)
        y = y.reshape(*x.shape[:-1], self.weight.shape[0])
        return y if self.bias is None else y + self.bias


def dense_linear(weight: torch.Tensor, bias: Optional[torch.Tensor], group_size: Optional[int]) -> nn.Module:
    """A float matrix as a layer: kept dense (group_size None) or RTN-quantized to 4 bits in groups of group_size."""
    if group_size is None:
        return RowwiseLinear(weight, bias)
    return W4A16Linear(quantize_rtn(weight, group_size), bias)


def dense_weight(layer: nn.Module, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The float32 [N, K] weight a layer multiplies by (dequantized where it is 4- or 8-bit); rows (int64 ids):
    only those rows, in that order (a draft vocabulary's output rows: ~1/6 of the dequantizing)."""
    def pick(t):
        return t if rows is None else t[rows]

    if isinstance(layer, W4A16Linear):
        return dequantize(QuantizedWeight(*map(pick, (layer.qweight, layer.scales, layer.mins)), layer.group_size)).float()
    if isinstance(layer, W8A16Linear):
        return dequantize_w8(*map(pick, (layer.qweight, layer.scales, layer.mins)), layer.group_size)
    if isinstance(layer, SumOfLinears):
        return sum(dense_weight(part, rows) for part in layer.parts)
    if isinstance(layer, (RowwiseLinear, nn.Linear)):
        return pick(layer.weight.detach()).float()
    raise TypeError(f"cannot read the weight of a {type(layer).__name__}")
