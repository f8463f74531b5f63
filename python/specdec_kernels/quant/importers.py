"""Exact importers into the canonical form: GGUF Q4_0/Q4_1 blocks, GPTQ and AWQ packed checkpoints. Nothing is
requantized: each format's integers and scales map onto W = scales * q + mins as they are."""
from typing import Optional

import numpy as np
import torch

from specdec_kernels.reference import pack_int4

from .formats import QuantizedWeight


# ---------------------------------------------------------------- GGUF
def _gguf_tensor(path: str, tensor_name: str):
    from .gguf_check import read_gguf  # imports gguf: only when a GGUF file is read

    for tensor in read_gguf(path).tensors:
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
