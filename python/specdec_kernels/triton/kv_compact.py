"""KV compaction in Triton (docs/design.md 3.3): in place, entry cache_len + accept_idx[i] moves to cache_len + i.

accept_idx increases and accept_idx[i] >= i, so a destination is never read by a later move, but it may be
the source of an earlier one: the moves of a row run in path order inside one program, a barrier between
moves. Programs split the [H * D] features of each (layer, batch row) entry: they never share an element.
"""
import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.triton.checks import check_kv_compact_args

with optional_imports():
    import triton
    import triton.language as tl


@triton.jit
def _kv_compact_kernel(k_ptr, v_ptr, lens_ptr, idx_ptr, len_ptr, B, T, S, FEATURES,
                       BLOCK_F: tl.constexpr):
    entry = tl.program_id(0)  # (layer, batch row) of a [L * B, S, FEATURES] view
    b = entry % B
    features = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    in_row = features < FEATURES
    start = tl.load(lens_ptr + b)
    accepted = tl.load(len_ptr + b)
    base = entry.to(tl.int64) * S * FEATURES + features
    for i in range(1, accepted):  # i = 0 is the root: it is in place already
        src = (start + tl.load(idx_ptr + b * T + i)) * FEATURES
        dst = (start + i).to(tl.int64) * FEATURES
        k = tl.load(k_ptr + base + src, mask=in_row)
        v = tl.load(v_ptr + base + src, mask=in_row)
        tl.store(k_ptr + base + dst, k, mask=in_row)
        tl.store(v_ptr + base + dst, v, mask=in_row)
        tl.debug_barrier()  # no warp runs ahead and overwrites a source another warp has yet to read


def kv_compact(k_cache, v_cache, cache_lens, accept_idx, accept_len) -> None:
    """In place: caches [B, S, H, D] or stacked [L, B, S, H, D]; the accepted entries (root first) move to
    [cache_lens, cache_lens + accept_len) and cache_lens advances by accept_len. Checked before any write."""
    check_kv_compact_args(k_cache, v_cache, cache_lens, accept_idx, accept_len)
    batch, s_max, heads, d = k_cache.shape[-4:]
    entries = k_cache.numel() // (s_max * heads * d)
    features = heads * d
    block_f = min(1024, triton.next_power_of_2(features))
    grid = (entries, triton.cdiv(features, block_f))
    _kv_compact_kernel[grid](k_cache, v_cache, cache_lens, accept_idx.contiguous(), accept_len, batch,
                             accept_idx.shape[1], s_max, features, BLOCK_F=block_f)
    cache_lens += accept_len.to(torch.int32)
