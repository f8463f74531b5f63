"""GGUF block bytes -> the exact affine form W = scales * q + mins, q small unsigned integers (docs/design.md 3.1,
3.4). Every type below is such a map with scales and mins that float32 (Q4_1: its own float16) holds exactly, so
nothing is requantized and the values equal gguf's dequantization bit for bit.

  type  values, bytes per block   q      group   scales, mins
  Q4_0  32, 18                    4 bit  32      d, -8 d
  Q4_1  32, 20                    4 bit  32      d, m
  Q5_0  32, 22                    5 bit  32      d, -16 d
  Q5_1  32, 24                    5 bit  32      d, m
  Q8_0  32, 34                    8 bit  32      d, -128 d       (q = the stored int8 + 128)
  Q4_K  256, 144                  4 bit  32      d sc, -dmin m   (6-bit sc, m per sub-block of 32)
  Q5_K  256, 176                  5 bit  32      d sc, -dmin m
  Q6_K  256, 210                  6 bit  16      d sc, -32 d sc  (int8 sc per sub-block of 16)
"""
import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AffineRows:
    """W[n, k] = scales[n, k // group_size] * q[n, k] + mins[n, k // group_size]; q uint8 [N, K] below 2^bits."""

    q: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor
    group_size: int
    bits: int

    def rows(self, select) -> "AffineRows":
        """The same weight with its output rows (q, scales, mins alike) passed through `select`."""
        return AffineRows(select(self.q), select(self.scales), select(self.mins), self.group_size, self.bits)


def finite(name: str, values: torch.Tensor) -> torch.Tensor:
    """values, unless one is NaN or infinite (a damaged file): then a ValueError naming the tensor."""
    if not torch.isfinite(values).all():
        raise ValueError(f"tensor {name} holds NaN or infinite values")
    return values


# ---------------------------------------------------------------- fields of a block ([..., block bytes] uint8)
def _half(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of every block, as float32 [...] (exact)."""
    return blocks[..., offset:offset + 2].contiguous().view(torch.float16)[..., 0].float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Bytes [..., 16] -> 32 values: every low nibble, then every high nibble."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bit_planes(bits: torch.Tensor, width: int) -> torch.Tensor:
    """Bytes [..., B] -> [..., 8 / width, B]: plane i holds bits width * i .. of every byte."""
    shifts = torch.arange(0, 8, width, dtype=torch.uint8).view(-1, 1)
    return (bits.unsqueeze(-2) >> shifts) & ((1 << width) - 1)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: a 32-bit little-endian word [..., 4 bytes] -> its 32 bits, bit j (of element j) in 0/1."""
    return _bit_planes(qh, 1).transpose(-1, -2).reshape(*qh.shape[:-1], 32)


def _k_scales(packed: torch.Tensor):
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins. Bytes 0-3 hold scales 0-3 (low 6 bits) and the
    top 2 bits of scales 4-7; bytes 4-7 the same for the mins; bytes 8-11 the low 4 bits of scale 4 + i (low
    nibble) and min 4 + i (high nibble)."""
    low, high, rest = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = torch.cat([low & 0x3F, (rest & 0x0F) | ((low >> 6) << 4)], dim=-1)
    m = torch.cat([high & 0x3F, (rest >> 4) | ((high >> 6) << 4)], dim=-1)
    return sc.float(), m.float()


# ---------------------------------------------------------------- block decoders: blocks -> q, scales, mins
# Each takes blocks [..., block bytes] and returns q [..., values] (uint8) and per-group scales and mins.
def _q4_0(b):
    d = _half(b, 0)
    return _nibbles(b[..., 2:18]), d[..., None], -8 * d[..., None]


def _q4_1(b):  # d and m are exact float16 values: kept as float16 (half the bytes)
    half = lambda at: b[..., at:at + 2].contiguous().view(torch.float16)  # noqa: E731
    return _nibbles(b[..., 4:20]), half(0), half(2)


def _q5_0(b):
    d = _half(b, 0)
    return _nibbles(b[..., 6:22]) | (_high_bits(b[..., 2:6]) << 4), d[..., None], -16 * d[..., None]


def _q5_1(b):
    q = _nibbles(b[..., 8:24]) | (_high_bits(b[..., 4:8]) << 4)
    return q, _half(b, 0)[..., None], _half(b, 2)[..., None]


def _q8_0(b):
    d = _half(b, 0)
    return b[..., 2:34] ^ 0x80, d[..., None], -128 * d[..., None]  # int8 v -> v + 128: the sign bit flipped


def _k_quant(b, qs_at: int, qh_at=None):
    """Q4_K (qh_at None) and Q5_K: fp16 d, fp16 dmin, 12 scale bytes, [32 bytes of 5th bits], 128 nibble bytes.
    Nibble byte 32 c + l holds element l of sub-block 2 c (low) and of 2 c + 1 (high); bit i of 5th-bit byte l
    is the high bit of element l of sub-block i."""
    qs = b[..., qs_at:qs_at + 128].unflatten(-1, (4, 32))
    q = torch.stack([qs & 0x0F, qs >> 4], dim=-2).flatten(-3)
    if qh_at is not None:
        q |= _bit_planes(b[..., qh_at:qh_at + 32], 1).flatten(-2) << 4
    sc, m = _k_scales(b[..., 4:16])
    return q, _half(b, 0)[..., None] * sc, -(_half(b, 2)[..., None] * m)


def _q6_k(b):
    """128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, fp16 d; two halves of 128 values. In half h,
    nibble byte l holds element l (low) and l + 64 (high); 2-bit byte l holds elements l, l + 32, l + 64, l + 96."""
    low = b[..., :128].unflatten(-1, (2, 64))
    low = torch.cat([low & 0x0F, low >> 4], dim=-1)  # [..., 2, 128]
    high = _bit_planes(b[..., 128:192].unflatten(-1, (2, 32)), 2).flatten(-2)  # [..., 2, 128]
    scales = _half(b, 208)[..., None] * b[..., 192:208].contiguous().view(torch.int8).float()  # exact: 11 + 8 bits
    return (low | (high << 4)).flatten(-2), scales, -32 * scales


# type: (values per block, bytes per block, q bits, group size, decoder)
BLOCK_TYPES = {
    "Q4_0": (32, 18, 4, 32, _q4_0), "Q4_1": (32, 20, 4, 32, _q4_1), "Q5_0": (32, 22, 5, 32, _q5_0),
    "Q5_1": (32, 24, 5, 32, _q5_1), "Q8_0": (32, 34, 8, 32, _q8_0),
    "Q4_K": (256, 144, 4, 32, lambda b: _k_quant(b, 16)), "Q5_K": (256, 176, 5, 32, lambda b: _k_quant(b, 48, 16)),
    "Q6_K": (256, 210, 6, 16, _q6_k),
}


def decode(raw: np.ndarray, type_name: str, name: str) -> AffineRows:
    """A GGUF tensor's raw bytes (uint8 [..., row bytes], rows of whole blocks) of type `type_name` -> its exact
    AffineRows, rows first. A type not listed above, or scales that are not finite: a ValueError naming `name`."""
    if type_name not in BLOCK_TYPES:
        raise ValueError(f"tensor {name}: quantization type {type_name} is not supported "
                         f"(block types: {', '.join(BLOCK_TYPES)})")
    values, block_bytes, bits, group_size, decoder = BLOCK_TYPES[type_name]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.ndim == 0 or raw.shape[-1] % block_bytes:
        raise ValueError(f"tensor {name}: rows of {raw.shape[-1] if raw.ndim else 0} bytes are not whole "
                         f"{type_name} blocks of {block_bytes} bytes")
    with warnings.catch_warnings():  # a read-only mmap: the decoders only read it
        warnings.simplefilter("ignore", UserWarning)
        rows = torch.from_numpy(raw.reshape(-1, raw.shape[-1]))
    q, scales, mins = decoder(rows.unflatten(-1, (-1, block_bytes)))
    n = rows.shape[0]
    scales, mins = scales.reshape(n, -1), mins.reshape(n, -1)
    finite(name, scales)
    finite(name, mins)
    return AffineRows(q.reshape(n, -1), scales, mins, group_size, bits)


def stack_rows(parts: list) -> AffineRows:
    """One AffineRows whose output rows are the parts' rows, in order, in the smallest group size (a group of 32
    with one scale is two groups of 16 with that scale: exact) and the largest q width."""
    group_size = min(p.group_size for p in parts)
    dtypes = {p.scales.dtype for p in parts}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # float16 and float32 values are float32's

    def regroup(values, part):
        return values.to(dtype).repeat_interleave(part.group_size // group_size, dim=1)

    return AffineRows(torch.cat([p.q for p in parts]), torch.cat([regroup(p.scales, p) for p in parts]),
                      torch.cat([regroup(p.mins, p) for p in parts]), group_size, max(p.bits for p in parts))


def dequantize(weight: AffineRows) -> torch.Tensor:
    """The float32 [N, K] weight: scales * q, then + mins (two roundings, as gguf's numpy: its bits), in place."""
    values = weight.q.float().unflatten(1, (-1, weight.group_size))
    return values.mul_(weight.scales.float()[..., None]).add_(weight.mins.float()[..., None]).flatten(1)
