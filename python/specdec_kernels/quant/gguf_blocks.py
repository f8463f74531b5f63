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
from dataclasses import dataclass

import numpy as np
import torch

from specdec_kernels.reference import pack_int4

from .formats import QuantizedWeight


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


def finite(name: str, values):
    """values (numpy, or a float32/float16 CPU tensor), unless one is NaN or infinite (a damaged file): then a
    ValueError naming the tensor. numpy's check: single-threaded, no waits on busy cores."""
    if not np.isfinite(np.asarray(values)).all():
        raise ValueError(f"tensor {name} holds NaN or infinite values")
    return values


# ---------------------------------------------------------------- fields of a block ([..., block bytes] uint8)
# numpy, not torch: these byte operations on short rows run several times faster in numpy.
def _half(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The float16 at byte `offset` of every block, as float32 [..., 1] (exact)."""
    return blocks[..., offset:offset + 2].view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes [..., 16] -> 32 values: every low nibble, then every high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bit_planes(bits: np.ndarray, width: int) -> np.ndarray:
    """Bytes [..., B] -> [..., 8 / width, B]: plane i holds bits width * i .. of every byte."""
    shifts = np.arange(0, 8, width, dtype=np.uint8).reshape(-1, 1)
    return (bits[..., None, :] >> shifts) & np.uint8((1 << width) - 1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: a 32-bit little-endian word [..., 4 bytes] -> its 32 bits, bit j (of element j) as 0/1."""
    return ((qh.view("<u4") >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _k_scales(packed: np.ndarray):
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins. Bytes 0-3 hold scales 0-3 (low 6 bits) and the
    top 2 bits of scales 4-7; bytes 4-7 the same for the mins; bytes 8-11 the low 4 bits of scale 4 + i (low
    nibble) and min 4 + i (high nibble)."""
    low, high, rest = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([low & 0x3F, (rest & 0x0F) | ((low >> 6) << 4)], axis=-1)
    m = np.concatenate([high & 0x3F, (rest >> 4) | ((high >> 6) << 4)], axis=-1)
    return sc.astype(np.float32), m.astype(np.float32)


# ---------------------------------------------------------------- block decoders: blocks -> q, scales, mins
# Each takes blocks [..., block bytes] and returns q [..., values] (uint8) and scales and mins [..., groups].
def _q4_0(b):
    d = _half(b, 0)
    return _nibbles(b[..., 2:18]), d, -8 * d


def _q4_1(b):  # d and m stay float16, as stored (exact, and half the bytes of float32)
    return _nibbles(b[..., 4:20]), b[..., 0:2].view(np.float16), b[..., 2:4].view(np.float16)


def _q5_0(b):
    d = _half(b, 0)
    return _nibbles(b[..., 6:22]) | (_high_bits(b[..., 2:6]) << 4), d, -16 * d


def _q5_1(b):
    return _nibbles(b[..., 8:24]) | (_high_bits(b[..., 4:8]) << 4), _half(b, 0), _half(b, 2)


def _q8_0(b):
    d = _half(b, 0)
    return b[..., 2:34] ^ np.uint8(0x80), d, -128 * d  # int8 v -> v + 128: the sign bit flipped


def _k_quant(b, qs_at: int, qh_at=None):
    """Q4_K (qh_at None) and Q5_K: fp16 d, fp16 dmin, 12 scale bytes, [32 bytes of 5th bits], 128 nibble bytes.
    Nibble byte 32 c + l holds element l of sub-block 2 c (low) and of 2 c + 1 (high); bit i of 5th-bit byte l
    is the high bit of element l of sub-block i."""
    lead = b.shape[:-1]
    qs = b[..., qs_at:qs_at + 128].reshape(*lead, 4, 1, 32)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-2).reshape(*lead, 256)
    if qh_at is not None:
        q |= _bit_planes(b[..., qh_at:qh_at + 32], 1).reshape(*lead, 256) << 4
    sc, m = _k_scales(b[..., 4:16])
    return q, _half(b, 0) * sc, -(_half(b, 2) * m)


def _q6_k(b):
    """128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, fp16 d; two halves of 128 values. In half h,
    nibble byte l holds element l (low) and l + 64 (high); 2-bit byte l holds elements l, l + 32, l + 64, l + 96."""
    lead = b.shape[:-1]
    low = _nibbles(b[..., :128].reshape(*lead, 2, 64))  # [..., 2, 128]
    high = _bit_planes(b[..., 128:192].reshape(*lead, 2, 32), 2).reshape(*lead, 2, 128)
    scales = _half(b, 208) * b[..., 192:208].view(np.int8).astype(np.float32)  # exact: 11 + 8 bits
    return (low | (high << 4)).reshape(*lead, 256), scales, -32 * scales


# type: (values per block, bytes per block, q bits, group size, decoder)
BLOCK_TYPES = {
    "Q4_0": (32, 18, 4, 32, _q4_0), "Q4_1": (32, 20, 4, 32, _q4_1), "Q5_0": (32, 22, 5, 32, _q5_0),
    "Q5_1": (32, 24, 5, 32, _q5_1), "Q8_0": (32, 34, 8, 32, _q8_0),
    "Q4_K": (256, 144, 4, 32, lambda b: _k_quant(b, 16)), "Q5_K": (256, 176, 5, 32, lambda b: _k_quant(b, 48, 16)),
    "Q6_K": (256, 210, 6, 16, _q6_k),
}
FOUR_BIT_TYPES = tuple(name for name, fields in BLOCK_TYPES.items() if fields[2] == 4)


def decode(raw: np.ndarray, type_name: str, name: str) -> AffineRows:
    """A GGUF tensor's raw bytes (uint8 [..., row bytes], rows of whole blocks) of type `type_name` -> its exact
    AffineRows, rows first. A type not listed above, or scales that are not finite: a ValueError naming `name`."""
    if type_name not in BLOCK_TYPES:
        raise ValueError(f"tensor {name}: quantization type {type_name} is not supported "
                         f"(block types: {', '.join(BLOCK_TYPES)})")
    _, block_bytes, bits, group_size, decoder = BLOCK_TYPES[type_name]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.ndim == 0 or raw.shape[-1] % block_bytes:
        raise ValueError(f"tensor {name}: rows of {raw.shape[-1] if raw.ndim else 0} bytes are not whole "
                         f"{type_name} blocks of {block_bytes} bytes")
    n = raw.size // raw.shape[-1]
    q, scales, mins = decoder(raw.reshape(n, -1, block_bytes))
    finite(name, scales)
    finite(name, mins)
    # writable, so never a view of a read-only file mapping
    q, scales, mins = (torch.from_numpy(np.require(part, requirements=("C", "W")).reshape(n, -1))
                       for part in (q, scales, mins))
    return AffineRows(q, scales, mins, group_size, bits)


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
    """The float32 [N, K] weight: scales q (exact), then + mins, gguf's order and so its bits; computed in place
    (one float32 copy at the peak; numpy: single-threaded, no waits on busy cores)."""
    n = weight.q.shape[0]
    values = weight.q.numpy().astype(np.float32).reshape(n, -1, weight.group_size)
    values *= weight.scales.float().numpy()[..., None]
    values += weight.mins.float().numpy()[..., None]
    return torch.from_numpy(values.reshape(n, -1))


def to_canonical(weight: AffineRows) -> QuantizedWeight:
    """A weight of 4-bit q as the canonical W4A16 form (docs/design.md 3.1)."""
    if weight.bits > 4:
        raise ValueError(f"q of {weight.bits} bits do not fit the 4-bit canonical form")
    return QuantizedWeight(pack_int4(weight.q), weight.scales, weight.mins, weight.group_size)
