"""Typed wrappers over torch.ops.specdec.*, each paired with its fake (meta) kernel.

The fake kernels exist so that every op traces under torch.compile and passes
torch.library.opcheck: they compute output shapes/dtypes without touching data.
"""
import os
from contextlib import contextmanager

import torch

from . import _C

_ops = torch.ops.specdec

CPU_PATHS = ("amx", "avx512vnni", "avx512", "avx2", "generic")  # include/specdec/cpu_isa.h, best first


@contextmanager
def cpu_path(name: str):
    """The CPU kernels take path `name` for the duration: they read SPECDEC_CPU_ISA on every call, and refuse a
    path this CPU lacks at the first (RuntimeError). The empty name means the detected path."""
    before = os.environ.get("SPECDEC_CPU_ISA")
    os.environ["SPECDEC_CPU_ISA"] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPECDEC_CPU_ISA"]
        else:
            os.environ["SPECDEC_CPU_ISA"] = before


def _entry(name: str):
    """Calls of op `name`: eagerly through _C.direct (the same dispatcher entry, unboxed: a few microseconds less
    per call, which the runner's ~9 calls per layer per token feel), traced (torch.compile) through torch.ops."""
    boxed, direct = getattr(_ops, name), getattr(_C.direct, name)
    is_compiling = torch.compiler.is_compiling

    def call(*args):
        return boxed(*args) if is_compiling() else direct(*args)

    return call


_w4a16_gemm, _w8a16_gemm, _tree_attention, _tree_verify_greedy, _kv_compact = (
    _entry(name) for name in ("w4a16_gemm", "w8a16_gemm", "tree_attention", "tree_verify_greedy", "kv_compact"))
_rms_norm, _add_rms_norm, _silu_and_mul, _rope_and_cache = (
    _entry(name) for name in ("rms_norm", "add_rms_norm", "silu_and_mul", "rope_and_cache"))

# Rows of output columns per CPU weight tile (one AVX-512 vector of float32); N is padded to it.
CPU_TILE_N = 16
# CUDA tiles cover 64 output columns; N is padded to it at prepack time.
CUDA_TILE_N = 64


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def prepacked_shapes(device_type: str, n: int, k: int, group_size: int):
    """Shapes of (packed_qweight, packed_scales, packed_mins) in a backend's own layout."""
    if device_type == "cuda":
        n_pad = _round_up(n, CUDA_TILE_N)
        return [(k // 16, 2 * n_pad), (k // group_size, n_pad), (k // group_size, n_pad)]
    tiles = _round_up(n, 4 * CPU_TILE_N) // CPU_TILE_N  # tiles go in fours
    return [(tiles, k // 8, CPU_TILE_N), (tiles, k // group_size, CPU_TILE_N), (tiles, k // group_size, CPU_TILE_N)]


# ---------------------------------------------------------------- W4A16
def w4a16_prepack(qweight, scales, mins, group_size: int):
    """Canonical (qweight uint8 [N, K/2], scales/mins [N, K/G]) -> the layout of qweight's device."""
    return _ops.w4a16_prepack(qweight, scales, mins, group_size)


def w4a16_gemm(x, packed_qweight, packed_scales, packed_mins, group_size: int, out_features: int,
               x_digits: int = 3):
    """y = x @ W.T for prepacked 4-bit W. x: [M, K] (float32/bfloat16/float16 on CPU) -> [M, N] in x.dtype.

    x_digits (1-3): the CPU integer paths (AMX, AVX512-VNNI) take x as that many 7-bit digits per value in a
    fixed-point window per row and group (reference.round_x_digits): error <= 2^-(7 x_digits - 1) of the
    group's largest |x|, integer work proportional to x_digits. Other paths multiply x as given."""
    return _w4a16_gemm(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, x_digits)


@torch.library.register_fake("specdec::w4a16_prepack")
def _w4a16_prepack_fake(qweight, scales, mins, group_size):
    n, k = qweight.shape[0], qweight.shape[1] * 2
    (qs, ss, ms) = prepacked_shapes(qweight.device.type, n, k, group_size)
    q_dtype = torch.int32
    s_dtype = scales.dtype if qweight.device.type == "cuda" else torch.float32
    return [qweight.new_empty(qs, dtype=q_dtype), scales.new_empty(ss, dtype=s_dtype), mins.new_empty(ms, dtype=s_dtype)]


@torch.library.register_fake("specdec::w4a16_gemm")
def _w4a16_gemm_fake(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, x_digits=3):
    torch._check(x.dim() == 2, lambda: f"x must be 2-D [M, K], got {tuple(x.shape)}")
    torch._check(x.device == packed_qweight.device,
                 lambda: f"x and packed_qweight must be on the same device, got {x.device} and {packed_qweight.device}")
    return x.new_empty((x.shape[0], out_features))


# ---------------------------------------------------------------- W8A16 (CPU)
# Every CPU path has w8a16_gemm (integer dot products or float FMAs); elsewhere quant.W8A16Linear
# holds two 4-bit planes.
def w8a16_supported(device: torch.device) -> bool:
    """Whether w8a16_gemm runs for tensors on `device`."""
    return device.type == "cpu"


def w8a16_prepack(qweight, scales, mins, group_size: int):
    """Canonical (qweight uint8 [N, K], q = 0..255, scales/mins [N, K/G]) -> the CPU layout."""
    return _ops.w8a16_prepack(qweight, scales, mins, group_size)


def w8a16_gemm(x, packed_qweight, packed_scales, packed_mins, group_size: int, out_features: int,
               x_digits: int = 3):
    """y = x @ W.T for prepacked 8-bit W (W = scales * q + mins per group). x: [M, K] -> [M, N] in x.dtype.
    x_digits as for w4a16_gemm."""
    return _w8a16_gemm(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, x_digits)


@torch.library.register_fake("specdec::w8a16_prepack")
def _w8a16_prepack_fake(qweight, scales, mins, group_size):
    n, k = qweight.shape
    (_, ss, ms) = prepacked_shapes("cpu", n, k, group_size)
    qs = (ss[0], k // 4, CPU_TILE_N)
    return [qweight.new_empty(qs, dtype=torch.int32), scales.new_empty(ss, dtype=torch.float32),
            mins.new_empty(ms, dtype=torch.float32)]


torch.library.register_fake("specdec::w8a16_gemm")(_w4a16_gemm_fake)


# ---------------------------------------------------------------- tree verification and KV compaction
def tree_verify_greedy(tokens, parents, logits):
    """-> (accept_idx int64 [B, T] padded with -1, accept_len int64 [B] counting the root, bonus int64 [B])."""
    return _tree_verify_greedy(tokens, parents, logits)


def tree_verify_sample(tokens, parents, logits, temperature: float, top_p: float = 1.0, top_k: int = 0,
                       draft_probs=None, uniforms=None, generator=None):
    """Lossless recursive rejection sampling over the tree (see reference.tree_verify_sample).

    temperature 0 means greedy. Randomness: uniforms float32 [B, T + 1] (uniforms[b, i] decides node i,
    uniforms[b, T] samples the bonus), drawn from `generator` when not given.
    """
    if temperature == 0:
        return tree_verify_greedy(tokens, parents, logits)
    if uniforms is None:
        uniforms = torch.rand(tokens.shape[0], tokens.shape[1] + 1, generator=generator, device=tokens.device)
    return _ops.tree_verify_sample(tokens, parents, logits, uniforms, float(temperature), float(top_p), int(top_k),
                                   draft_probs)


def kv_compact(k_cache, v_cache, cache_lens, accept_idx, accept_len) -> None:
    """In place: keep the accepted entries at [cache_lens, cache_lens + accept_len), advance cache_lens."""
    _kv_compact(k_cache, v_cache, cache_lens, accept_idx, accept_len)


def _verdict_fake(tokens):
    batch, t = tokens.shape
    return tokens.new_empty((batch, t)), tokens.new_empty((batch,)), tokens.new_empty((batch,))


@torch.library.register_fake("specdec::tree_verify_greedy")
def _tree_verify_greedy_fake(tokens, parents, logits):
    return _verdict_fake(tokens)


@torch.library.register_fake("specdec::tree_verify_sample")
def _tree_verify_sample_fake(tokens, parents, logits, uniforms, temperature, top_p, top_k, draft_probs):
    return _verdict_fake(tokens)


@torch.library.register_fake("specdec::kv_compact")
def _kv_compact_fake(k_cache, v_cache, cache_lens, accept_idx, accept_len):
    return None


# ---------------------------------------------------------------- tree attention
def tree_attention(q, k_cache, v_cache, cache_lens, tree_mask=None, scale=None):
    """q [B, T, Hq, D] over caches [B, S_max, Hkv, D] holding the new K/V at [cache_lens, cache_lens + T);
    tree_mask int64 [B, T, ceil(T/64)] (tree.pack_tree_mask) or None for causal -> [B, T, Hq, D].

    On CPUs with AMX (path `amx`) the products run on bf16 tiles, float32 operands split in two bf16 pieces:
    ~2^-15 of each product is dropped (SPECDEC_CPU_ISA=avx512 gives the float32 FMA path)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _tree_attention(q, k_cache, v_cache, cache_lens, tree_mask, scale)


@torch.library.register_fake("specdec::tree_attention")
def _tree_attention_fake(q, k_cache, v_cache, cache_lens, tree_mask, scale):
    torch._check(q.dim() == 4, lambda: f"q must be [B, T, Hq, D], got {tuple(q.shape)}")
    return torch.empty_like(q)


# ---------------------------------------------------------------- Llama layer ops (the runner's glue)
# Small row-wise CPU ops that replace chains of generic torch ops between the GEMMs of a decoder layer.
def rms_norm(x, weight, eps: float):
    """x [..., n] * weight / sqrt(mean(x^2) + eps), row by row (computed in float32)."""
    return _rms_norm(x, weight, float(eps))


def add_rms_norm(x, residual, weight, eps: float):
    """-> (x + residual, rms_norm(x + residual)): the residual add fused with the next layer's norm."""
    return _add_rms_norm(x, residual, weight, float(eps))


def silu_and_mul(x):
    """x [..., 2H] = [gate | up] -> silu(gate) * up [..., H]."""
    return _silu_and_mul(x)


def rope_and_cache(q, k, v, positions, rope_cos, rope_sin, k_cache, v_cache, cache_lens):
    """RoPE of q [B, T, Hq, D] and k [B, T, Hkv, D] (adjacent pairs (x[2i], x[2i+1]), the GGUF layout) at
    positions int64 [B, T], with cos/sin tables float32 [P, D/2]; writes RoPE(k) and v into the caches
    [B, S_max, Hkv, D] at [cache_lens, cache_lens + T) and returns RoPE(q) [B, T, Hq, D]."""
    return _rope_and_cache(q, k, v, positions, rope_cos, rope_sin, k_cache, v_cache, cache_lens)


@torch.library.register_fake("specdec::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("specdec::add_rms_norm")
def _add_rms_norm_fake(x, residual, weight, eps):
    torch._check(residual.shape == x.shape, lambda: f"residual must have the shape of x {tuple(x.shape)}")
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@torch.library.register_fake("specdec::silu_and_mul")
def _silu_and_mul_fake(x):
    torch._check(x.shape[-1] % 2 == 0, lambda: f"x must end in an even dim, got {tuple(x.shape)}")
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.register_fake("specdec::rope_and_cache")
def _rope_and_cache_fake(q, k, v, positions, rope_cos, rope_sin, k_cache, v_cache, cache_lens):
    torch._check(q.dim() == 4, lambda: f"q must be [B, T, Hq, D], got {tuple(q.shape)}")
    return q.new_empty(q.shape)
