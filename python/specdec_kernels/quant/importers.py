"""Exact importers into the canonical form: GGUF 4-bit tensors (decoded by quant.gguf_blocks), GPTQ and AWQ
packed checkpoints. Nothing is requantized: each format's integers and scales map onto W = scales * q + mins as
they are."""
from typing import Optional

import torch

from specdec_kernels.reference import pack_int4

from .formats import GROUP_SIZES, QuantizedWeight
from .gguf_blocks import FOUR_BIT_TYPES, decode, to_canonical


# ---------------------------------------------------------------- GGUF
def _gguf_tensor(path: str, tensor_name: str):
    from .gguf_check import read_gguf  # imports gguf: only when a GGUF file is read

    for tensor in read_gguf(path).tensors:
        if tensor.name == tensor_name:
            return tensor
    raise KeyError(f"tensor {tensor_name!r} not found in {path}")


def from_gguf(path: str, tensor_name: str) -> QuantizedWeight:
    """Read a 4-bit tensor (Q4_0, Q4_1, Q4_K) of a GGUF file, keeping its quantization exactly (G = 32)."""
    tensor = _gguf_tensor(path, tensor_name)
    qtype = tensor.tensor_type.name
    if qtype not in FOUR_BIT_TYPES:
        raise ValueError(f"{tensor_name} is {qtype}; from_gguf reads {', '.join(FOUR_BIT_TYPES)} tensors")
    return to_canonical(decode(tensor.data, qtype, tensor_name))


# ---------------------------------------------------------------- GPTQ / AWQ
# Both store W[n, k] = s (q - z): codes q and zero points z in 0..15, 16-bit scales s per group of the input
# dimension (docs/design.md 3.1.1).
_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ puts column 8c + _AWQ_ORDER[i] in bits 4i..4i+3
# GPTQ v1 stores each zero point minus one; GPTQModel reads it back by adding one to every nibble of the whole
# word, borrows included (so a zero point of 0 survives), as AutoGPTQ's nibble-wise +1 does for z >= 1
_GPTQ_V1_ZERO_OFFSET = 0x11111111


def _unpack_int32(packed: torch.Tensor, dim: int, order=tuple(range(8))) -> torch.Tensor:
    """int32 with 8 nibbles -> the 8 values along `dim` (value order[i] sits in bits 4i)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [..., 8], nibble i
    values = nibbles[..., torch.argsort(torch.tensor(order))]
    values = values.movedim(-1, dim + 1) if dim == 0 else values
    shape = list(packed.shape)
    shape[dim] *= 8
    return values.reshape(shape)


def _canonical_group_size(k: int, group_size: int) -> int:
    """The largest canonical group size that tiles a checkpoint group of `group_size` (-1: one group of all K)."""
    group = k if group_size == -1 else group_size
    if group > 0 and k % group == 0:
        for size in sorted(GROUP_SIZES, reverse=True):
            if group % size == 0:
                return size
    raise ValueError(f"group_size {group_size} cannot be mapped onto canonical groups of {GROUP_SIZES} for K = {k}")


def _expect(name: str, tensor: torch.Tensor, shape: tuple, dtype=torch.int32) -> None:
    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
        raise ValueError(f"{name} must be {dtype} {list(shape)}, got {tensor.dtype} {list(tensor.shape)}")


def _check_packed(qweight, qzeros, scales, group_size: int, packed_along_k: bool) -> int:
    """The shapes and dtypes GPTQ (qweight packed along K) and AWQ (along N) share; -> K."""
    if qweight.dim() != 2 or scales.dim() != 2:
        raise ValueError(f"qweight and scales must be 2-D, got {list(qweight.shape)} and {list(scales.shape)}")
    n, k = scales.shape[1], qweight.shape[0] * (8 if packed_along_k else 1)
    _canonical_group_size(k, group_size)
    groups = 1 if group_size == -1 else k // group_size
    if n % 8:
        raise ValueError(f"scales: N = {n} must be a multiple of 8 (8 zero points per int32 of qzeros)")
    _expect("qweight", qweight, (k // 8, n) if packed_along_k else (k, n // 8))
    _expect("qzeros", qzeros, (groups, n // 8))
    _expect("scales", scales, (groups, n), scales.dtype)
    return k


def _from_zero_points(q_kn: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                      group_size: int) -> QuantizedWeight:
    """q [K, N], zero points z and scales s [K/group, N] with W = s (q - z) -> canonical (mins = -z s), exactly.

    A checkpoint group larger than the canonical ones becomes several canonical groups repeating its s and z.
    -z s is exact in float32 (s has at most 11 significant bits, z 4) but often not in s's own 16-bit dtype:
    scales and mins stay 16-bit where every -z s fits, else both are float32 (they share a dtype)."""
    if scales.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"scales must be float16 or bfloat16 (-z s is then exact in float32), got {scales.dtype}")
    canonical = _canonical_group_size(q_kn.shape[0], group_size)
    repeats = q_kn.shape[0] // canonical // scales.shape[0]
    scales_nk = scales.t().repeat_interleave(repeats, dim=1).contiguous()
    mins = -zeros.t().repeat_interleave(repeats, dim=1).float() * scales_nk.float()
    if torch.equal(mins.to(scales.dtype).float(), mins):
        mins = mins.to(scales.dtype)
    else:
        scales_nk = scales_nk.float()
    return QuantizedWeight(pack_int4(q_kn.t().contiguous()), scales_nk, mins, canonical)


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
              g_idx: Optional[torch.Tensor] = None, zeros_minus_one: bool = True) -> QuantizedWeight:
    """GPTQ packed checkpoint -> canonical form, exactly.

    qweight int32 [K/8, N] (k = 8r + i in bits 4i of row r), qzeros int32 [K/G, N/8] (n = 8c + i in bits 4i of
    column c), scales float16/bfloat16 [K/G, N], g_idx [K] (each k's group); group_size -1: one group of all K.
    GPTQ v1 (checkpoint_format "gptq") stores zero - 1 (zeros_minus_one=True); "gptq_v2" stores zero.
    """
    k = _check_packed(qweight, qzeros, scales, group_size, packed_along_k=True)
    if g_idx is not None:
        _expect("g_idx", g_idx, (k,), g_idx.dtype)
        if not torch.equal(g_idx.cpu().long(), torch.arange(k) // (k // scales.shape[0])):
            raise ValueError("g_idx is not k // group_size: act-order (desc_act) checkpoints, whose groups are "
                             "permuted along K, are not supported (quantize with desc_act false)")
    if zeros_minus_one:
        qzeros = (qzeros.long() + _GPTQ_V1_ZERO_OFFSET) & 0xFFFFFFFF
    return _from_zero_points(_unpack_int32(qweight, dim=0), _unpack_int32(qzeros, dim=1), scales, group_size)


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> QuantizedWeight:
    """AWQ (GEMM) packed checkpoint -> canonical form, exactly.

    qweight int32 [K, N/8] and qzeros int32 [K/G, N/8] packed along N in AWQ's interleaved order,
    scales float16/bfloat16 [K/G, N]; W = s * (q - z).
    """
    _check_packed(qweight, qzeros, scales, group_size, packed_along_k=False)
    q = _unpack_int32(qweight, dim=1, order=_AWQ_ORDER)
    return _from_zero_points(q, _unpack_int32(qzeros, dim=1, order=_AWQ_ORDER), scales, group_size)
