"""4-bit weight formats: the canonical affine form (DESIGN 3.1), an RTN quantizer, exact importers
for GGUF Q4_0/Q4_1, GPTQ and AWQ, and the W4A16Linear module that runs on the specdec kernels."""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import ops
from .reference import dequantize_w4, pack_int4, unpack_int4

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


# ---------------------------------------------------------------- RTN
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


# ---------------------------------------------------------------- GGUF
def _gguf_tensor(path: str, tensor_name: str):
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, OSError) as err:
        raise ValueError(f"{path} is not a readable GGUF file (truncated or corrupt?): {err}") from err
    for tensor in reader.tensors:
        if tensor.name == tensor_name:
            return tensor
    raise KeyError(f"tensor {tensor_name!r} not found in {path}")


def gguf_q4_to_canonical(raw: np.ndarray, qtype_name: str) -> QuantizedWeight:
    """Raw GGUF Q4_0/Q4_1 rows (uint8 [N, blocks * block_bytes]) -> the canonical form, exactly.

    Q4_1 block: fp16 d, fp16 m, 16 bytes; Q4_0 block: fp16 d, 16 bytes (value = d * (q - 8)).
    Element j < 16 of a block is the low nibble of byte j, element j + 16 its high nibble.
    """
    header = {"Q4_0": 2, "Q4_1": 4}[qtype_name]
    n = raw.shape[0]
    blocks = torch.from_numpy(np.array(raw, dtype=np.uint8, copy=True)).reshape(n, -1, header + 16)
    d = blocks[..., 0:2].contiguous().view(torch.float16)[..., 0]
    mins = blocks[..., 2:4].contiguous().view(torch.float16)[..., 0] if qtype_name == "Q4_1" else -8 * d
    qs = blocks[..., header:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).reshape(n, -1)  # block element order
    return QuantizedWeight(pack_int4(q), d.clone(), mins.clone(), 32)


def from_gguf(path: str, tensor_name: str) -> QuantizedWeight:
    """Read a Q4_0 or Q4_1 tensor of a GGUF file, keeping its quantization exactly (G = 32)."""
    tensor = _gguf_tensor(path, tensor_name)
    qtype = tensor.tensor_type.name
    if qtype not in ("Q4_0", "Q4_1"):
        raise ValueError(f"{tensor_name} is {qtype}; from_gguf reads Q4_0 and Q4_1 tensors")
    return gguf_q4_to_canonical(np.asarray(tensor.data), qtype)


# ---------------------------------------------------------------- GPTQ / AWQ
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ puts column 8c + _AWQ_ORDER[i] in bits 4i..4i+3


def _unpack_int32(packed: torch.Tensor, dim: int, order=tuple(range(8))) -> torch.Tensor:
    """int32 with 8 nibbles -> the 8 values along `dim` (value order[i] sits in bits 4i)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [..., 8], nibble i
    values = nibbles[..., torch.argsort(torch.tensor(order))]
    values = values.movedim(-1, dim + 1) if dim == 0 else values
    shape = list(packed.shape)
    shape[dim] *= 8
    return values.reshape(shape)


def _from_zero_points(q_kn: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int):
    """q [K, N] and integer zero points z [K/G, N] with W = s * (q - z) -> canonical (mins = -z s)."""
    scales_nk = scales.t().contiguous()
    mins = (-zeros.t().to(torch.float32) * scales_nk.float()).to(scales.dtype)
    return QuantizedWeight(pack_int4(q_kn.t().contiguous()), scales_nk, mins, group_size)


def _check_trivial_g_idx(g_idx, k, group_size):
    if g_idx is not None and not torch.equal(g_idx.cpu().long(), torch.arange(k) // group_size):
        raise ValueError("act-order GPTQ checkpoints (a permuted g_idx) are not supported")


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
              g_idx: Optional[torch.Tensor] = None, zeros_minus_one: bool = True) -> QuantizedWeight:
    """GPTQ packed checkpoint -> canonical form, exactly.

    qweight int32 [K/8, N] (8 k's per int, k = 8r + i in bits 4i), qzeros int32 [K/G, N/8],
    scales [K/G, N]. GPTQ v1 files store zero - 1 (zeros_minus_one=True); gptq_v2 stores zero.
    """
    q = _unpack_int32(qweight, dim=0)
    _check_trivial_g_idx(g_idx, q.shape[0], group_size)
    zeros = _unpack_int32(qzeros, dim=1) + int(zeros_minus_one)
    return _from_zero_points(q, zeros, scales, group_size)


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> QuantizedWeight:
    """AWQ (GEMM) packed checkpoint -> canonical form, exactly.

    qweight int32 [K, N/8] and qzeros int32 [K/G, N/8] packed along N in AWQ's interleaved order,
    scales [K/G, N]; W = s * (q - z).
    """
    q = _unpack_int32(qweight, dim=1, order=_AWQ_ORDER)
    zeros = _unpack_int32(qzeros, dim=1, order=_AWQ_ORDER)
    return _from_zero_points(q, zeros, scales, group_size)


# ---------------------------------------------------------------- the modules
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
