"""Tree attention in Triton (docs/design.md 3.2, 3.3): T new tokens over a static KV cache under a bit-packed tree mask.

One program owns BLOCK_R query rows of one (batch row, KV head): the rows are (token, query head of the
group) pairs, so a GQA group shares every K/V tile it loads. It walks the keys in two phases with an
online softmax: the committed cache [0, L) that every row sees, then the new tokens [L, L + T) under
the mask. Short trees over long caches have few programs, so the cache phase is split over
NUM_SPLITS programs (flash-decoding); their (max, sum, output) partials are merged by _merge_kernel.
"""
import torch

from specdec_kernels.extras import optional_imports
from specdec_kernels.triton.checks import check_tree_attention_args

with optional_imports():
    import triton
    import triton.language as tl


@triton.jit
def _attend(acc, row_max, row_sum, q, k_ptrs, v_ptrs, visible, scale, IEEE: tl.constexpr):
    """One online-softmax step over a [BLOCK_S] tile of keys; invisible keys get -inf."""
    key_ok = tl.max(visible.to(tl.int32), axis=0) > 0  # skip loads of keys no row sees
    k = tl.load(k_ptrs, mask=key_ok[:, None], other=0.0)
    v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    if IEEE:
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    else:
        scores = tl.dot(q, tl.trans(k)) * scale
    scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, axis=1))
    # a row that has seen nothing yet keeps max -inf: shift by 0 so that exp gives 0, not NaN
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    p = tl.exp(scores - shift[:, None])
    correction = tl.exp(row_max - shift)
    row_sum = row_sum * correction + tl.sum(p, axis=1)
    if IEEE:
        acc = acc * correction[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, new_max, row_sum


@triton.jit
def _tree_attention_kernel(q_ptr, k_ptr, v_ptr, lens_ptr, mask_ptr, out_ptr, max_ptr, sum_ptr, scale,
                           T, G, HKV, cache_chunk,
                           stride_qb, stride_qt, stride_qh, stride_kb, stride_ks, stride_kh,
                           stride_tb, stride_tt, stride_os, stride_ob, stride_ot, stride_oh, stride_ss,
                           D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
                           HAS_MASK: tl.constexpr, NUM_SPLITS: tl.constexpr, IEEE: tl.constexpr):
    b, kv_head = (tl.program_id(1) // HKV).to(tl.int64), tl.program_id(1) % HKV  # int64: caches can pass 2**31
    split = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    token, head = rows // G, kv_head * G + rows % G
    row_ok = token < T
    dims = tl.arange(0, D)
    cache_len = tl.load(lens_ptr + b)
    q = tl.load(q_ptr + b * stride_qb + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None], other=0.0)
    kv_base = b * stride_kb + kv_head * stride_kh + dims[None, :]
    offsets = tl.arange(0, BLOCK_S)
    acc = tl.zeros((BLOCK_R, D), dtype=tl.float32)
    row_max = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)

    # phase 1: this split's share of the committed cache, visible to every row
    begin = split * cache_chunk
    end = tl.minimum(begin + cache_chunk, cache_len)
    for s0 in range(begin, end, BLOCK_S):
        keys = s0 + offsets
        visible = row_ok[:, None] & (keys < end)[None, :]
        acc, row_max, row_sum = _attend(acc, row_max, row_sum, q, k_ptr + kv_base + keys[:, None] * stride_ks,
                                        v_ptr + kv_base + keys[:, None] * stride_ks, visible, scale, IEEE)

    # phase 2 (last split): the new tokens; ancestors precede a node, so row t needs nodes <= t only
    if split == NUM_SPLITS - 1:
        last_token = tl.minimum(tl.program_id(0) * BLOCK_R + BLOCK_R - 1, G * T - 1) // G
        for j0 in range(0, last_token + 1, BLOCK_S):
            nodes = j0 + offsets
            if HAS_MASK:
                words = tl.load(mask_ptr + b * stride_tb + token[:, None] * stride_tt + (nodes // 64)[None, :],
                                mask=row_ok[:, None] & (nodes < T)[None, :], other=0)
                bit = ((words >> (nodes % 64).to(tl.int64)[None, :]) & 1) != 0
            else:
                bit = nodes[None, :] <= token[:, None]
            visible = row_ok[:, None] & (nodes < T)[None, :] & bit
            keys = cache_len + nodes
            acc, row_max, row_sum = _attend(acc, row_max, row_sum, q, k_ptr + kv_base + keys[:, None] * stride_ks,
                                            v_ptr + kv_base + keys[:, None] * stride_ks, visible, scale, IEEE)

    out_rows = split * stride_os + b * stride_ob + token * stride_ot + head * stride_oh
    if NUM_SPLITS == 1:
        out = acc / tl.where(row_ok, row_sum, 1.0)[:, None]  # padding rows saw nothing: no 0 / 0
        tl.store(out_ptr + out_rows[:, None] + dims[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        tl.store(out_ptr + out_rows[:, None] + dims[None, :], acc, mask=row_ok[:, None])
        stats = split * stride_ss + (b * T + token) * HKV * G + head  # [splits, B, T, Hq]
        tl.store(max_ptr + stats, row_max, mask=row_ok)
        tl.store(sum_ptr + stats, row_sum, mask=row_ok)


@triton.jit
def _merge_kernel(part_ptr, max_ptr, sum_ptr, out_ptr, stride_ps, stride_ss,
                  D: tl.constexpr, NUM_SPLITS: tl.constexpr):
    """out[row] = sum_s exp(max_s - max) acc_s / sum_s exp(max_s - max) sum_s, one program per (b, t, head)."""
    row = tl.program_id(0)
    dims = tl.arange(0, D)
    splits = tl.arange(0, NUM_SPLITS)
    maxes = tl.load(max_ptr + splits * stride_ss + row)
    top = tl.max(maxes, axis=0)
    weights = tl.where(maxes == float("-inf"), 0.0, tl.exp(maxes - top))
    total = tl.sum(weights * tl.load(sum_ptr + splits * stride_ss + row), axis=0)
    parts = tl.load(part_ptr + splits[:, None] * stride_ps + row * D + dims[None, :])
    out = tl.sum(parts * weights[:, None], axis=0) / total
    tl.store(out_ptr + row * D + dims, out.to(out_ptr.dtype.element_ty))


def _num_splits(programs: int, longest_cache: int, device: torch.device) -> int:
    """Split the cache phase until the programs fill the SMs, keeping >= 256 keys per split."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    splits = 1
    while programs * splits * 2 <= 2 * sms and longest_cache // (splits * 2) >= 256 and splits < 64:
        splits *= 2
    return splits


def tree_attention(q, k_cache, v_cache, cache_lens, tree_mask=None, scale=None, num_splits=None):
    """q [B, T, Hq, D] over caches [B, S_max, Hkv, D] holding the new K/V at [cache_lens, cache_lens + T);
    tree_mask int64 [B, T, ceil(T/64)] or None (causal among the new tokens) -> [B, T, Hq, D] in q.dtype.
    num_splits (power of two) splits the committed cache over programs; chosen from the SM count when None."""
    lens = check_tree_attention_args(q, k_cache, v_cache, cache_lens, tree_mask)
    batch, t, hq, d = q.shape
    hkv = k_cache.shape[2]
    group = hq // hkv
    scale = d**-0.5 if scale is None else float(scale)
    q = q.contiguous()
    block_r = max(16, min(64, triton.next_power_of_2(t * group)))
    row_blocks = triton.cdiv(t * group, block_r)
    longest = max(lens) if lens else 0
    if num_splits is None:
        num_splits = _num_splits(row_blocks * batch * hkv, longest, q.device)
    elif num_splits < 1 or num_splits & (num_splits - 1):
        raise ValueError(f"num_splits must be a power of two, got {num_splits}")
    cache_chunk = max(1, triton.cdiv(longest, num_splits))
    out = torch.empty_like(q)
    if num_splits == 1:
        part, maxes, sums = out, out, out  # the statistics are not written with one split
        stride_os = stride_ss = 0
    else:
        part = torch.empty((num_splits,) + q.shape, dtype=torch.float32, device=q.device)
        maxes = torch.empty((num_splits, batch, t, hq), dtype=torch.float32, device=q.device)
        sums = torch.empty_like(maxes)
        stride_os, stride_ss = part.stride(0), maxes.stride(0)
    mask = tree_mask.contiguous() if tree_mask is not None else q  # unread when HAS_MASK is False
    words = tree_mask.shape[2] if tree_mask is not None else 0
    grid = (row_blocks, batch * hkv, num_splits)
    _tree_attention_kernel[grid](
        q, k_cache, v_cache, cache_lens, mask, part, maxes, sums, scale, t, group, hkv, cache_chunk,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        t * words, words, stride_os, t * hq * d, hq * d, d, stride_ss,
        D=d, BLOCK_R=block_r, BLOCK_S=64 if d <= 64 else 32, HAS_MASK=tree_mask is not None, NUM_SPLITS=num_splits,
        IEEE=q.dtype == torch.float32)
    if num_splits > 1:
        _merge_kernel[(batch * t * hq,)](part, maxes, sums, out, stride_os, stride_ss, D=d, NUM_SPLITS=num_splits)
    return out
