"""Argument checks of the Triton tree ops: a ValueError naming the argument, raised before any kernel runs
(so a bad call leaves the caches untouched). The conditions are those of csrc/include/specdec/tree_checks.h."""
import torch

from specdec_kernels.tree import MAX_TREE_NODES, validate_parents

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _same_device(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {', '.join(f'{k}: {v}' for k, v in devices.items())}")


def check_tree_attention_args(q, k_cache, v_cache, cache_lens, tree_mask) -> list:
    """-> cache_lens as a Python list (needed on the host to size the work)."""
    if q.dim() != 4 or k_cache.dim() != 4:
        raise ValueError(f"q must be [B, T, Hq, D] and k_cache [B, S_max, Hkv, D], got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError(f"v_cache must have the shape and strides of k_cache {tuple(k_cache.shape)}, "
                         f"got {tuple(v_cache.shape)}")
    if q.dtype not in FLOATS or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache and v_cache must share a float dtype, got {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if k_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in the head dim")
    if cache_lens.dtype != torch.int32 or cache_lens.shape != (q.shape[0],):
        raise ValueError(f"cache_lens must be Int (int32) [B = {q.shape[0]}], got {cache_lens.dtype} "
                         f"{tuple(cache_lens.shape)}")
    _same_device(q=q, k_cache=k_cache, v_cache=v_cache, cache_lens=cache_lens, tree_mask=tree_mask)
    batch, t, hq, d = q.shape
    if k_cache.shape[0] != batch or k_cache.shape[3] != d:
        raise ValueError(f"k_cache must be [B = {batch}, S_max, Hkv, D = {d}], got {tuple(k_cache.shape)}")
    hkv = k_cache.shape[2]
    if hkv < 1 or hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    if d not in (16, 32, 64, 128, 256):
        raise ValueError(f"head dim must be a power of two in [16, 256], got {d}")
    if not 1 <= t <= MAX_TREE_NODES:
        raise ValueError(f"T must be in [1, {MAX_TREE_NODES}], got {t}")
    if tree_mask is not None:
        shape = (batch, t, (t + 63) // 64)
        if tree_mask.dtype != torch.int64 or tree_mask.shape != shape:
            raise ValueError(f"tree_mask must have shape {shape} and dtype int64, got {tuple(tree_mask.shape)} "
                             f"{tree_mask.dtype}")
    lens = cache_lens.tolist()
    for b, length in enumerate(lens):
        if length < 0 or length + t > k_cache.shape[1]:
            raise ValueError(f"cache overflow in row {b}: cache_lens {length} + T {t} > S_max {k_cache.shape[1]}")
    return lens


def check_tree(tokens, parents) -> None:
    if tokens.dim() != 2 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
    if parents.shape != tokens.shape:
        raise ValueError(f"tokens and parents must have one shape, got {tuple(tokens.shape)} and "
                         f"{tuple(parents.shape)}")
    _same_device(tokens=tokens, parents=parents)
    validate_parents(parents)


def check_logits(logits, tokens) -> None:
    """logits [B, T, V] of a float dtype; every token inside the vocabulary."""
    batch, t = tokens.shape
    if logits.dim() != 3 or logits.shape[:2] != (batch, t) or logits.shape[2] < 1:
        raise ValueError(f"logits must be [B = {batch}, T = {t}, V], got {tuple(logits.shape)}")
    if logits.dtype not in FLOATS:
        raise ValueError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    _same_device(logits=logits, tokens=tokens)
    vocab = logits.shape[2]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"tokens must be in [0, V = {vocab})")


def check_sampling_args(tokens, logits, uniforms, temperature, top_p, top_k, draft_probs) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use tree_verify_greedy for 0), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    batch, t = tokens.shape
    if uniforms.dtype != torch.float32 or uniforms.shape != (batch, t + 1):
        raise ValueError(f"uniforms must be float32 [B, T + 1] = [{batch}, {t + 1}], got {uniforms.dtype} "
                         f"{tuple(uniforms.shape)}")
    if draft_probs is not None and draft_probs.shape != logits.shape:
        raise ValueError(f"draft_probs must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(draft_probs.shape)}")
    _same_device(tokens=tokens, uniforms=uniforms, draft_probs=draft_probs)


def check_kv_compact_args(k_cache, v_cache, cache_lens, accept_idx, accept_len) -> None:
    """Caches [B, S, H, D] or stacked [L, B, S, H, D]; the accepted path of each row starts at the root, increases
    and stays inside the cache."""
    if k_cache.dim() not in (4, 5) or v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"k_cache must be [B, S, H, D] or [L, B, S, H, D] and v_cache must have the shape of "
                         f"k_cache {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous")
    batch, s_max = k_cache.shape[-4], k_cache.shape[-3]
    if cache_lens.dtype != torch.int32 or cache_lens.shape != (batch,):
        raise ValueError(f"cache_lens must be Int (int32) [B = {batch}], got {cache_lens.dtype} "
                         f"{tuple(cache_lens.shape)}")
    if accept_idx.dtype != torch.int64 or accept_idx.dim() != 2 or accept_idx.shape[0] != batch:
        raise ValueError(f"accept_idx must be int64 [B = {batch}, T], got {accept_idx.dtype} "
                         f"{tuple(accept_idx.shape)}")
    if accept_len.dtype != torch.int64 or accept_len.shape != (batch,):
        raise ValueError(f"accept_len must be int64 [B = {batch}], got {accept_len.dtype} {tuple(accept_len.shape)}")
    _same_device(k_cache=k_cache, v_cache=v_cache, cache_lens=cache_lens, accept_idx=accept_idx,
                 accept_len=accept_len)
    t = accept_idx.shape[1]
    for b, (start, n, path) in enumerate(zip(cache_lens.tolist(), accept_len.tolist(), accept_idx.tolist())):
        if not 1 <= n <= t:
            raise ValueError(f"accept_len[{b}] = {n} must be in [1, {t}]")
        if path[0] != 0:
            raise ValueError(f"accept_idx[{b}, 0] must be 0 (the root comes first), got {path[0]}")
        if any(later <= earlier for earlier, later in zip(path[: n - 1], path[1:n])):
            raise ValueError(f"accept_idx[{b}] must increase along the path, got {path[:n]}")
        if start < 0 or start + path[n - 1] >= s_max:
            raise ValueError(f"cache overflow in row {b}: cache_lens {start} + accept_idx {path[n - 1]} >= "
                             f"S {s_max}")
