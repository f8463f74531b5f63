"""Argument checks of the Triton tree ops, raised (ValueError naming the argument) before any kernel runs, so a bad
call leaves the caches untouched. The conditions are the C++ ones of csrc/include/specdec/*checks.h, which the CPU
and CUDA kernels run too, called through _C.checks; only the Triton kernels' own limits are written here."""
from specdec_kernels import _C


def check_tree_attention_args(q, k_cache, v_cache, cache_lens, tree_mask) -> list:
    """-> cache_lens as a Python list (needed on the host to size the work)."""
    lens = _C.checks.tree_attention(q, k_cache, v_cache, cache_lens, tree_mask)
    if v_cache.stride() != k_cache.stride():  # the kernel addresses both caches with k_cache's strides
        raise ValueError(f"v_cache must have the strides of k_cache {k_cache.stride()}, got {v_cache.stride()}")
    if q.shape[3] not in (16, 32, 64, 128, 256):  # the kernel's tl.arange over the head dim
        raise ValueError(f"q's head dim must be a power of two in [16, 256], got {q.shape[3]}")
    return lens.tolist()


def check_tree(tokens, parents) -> None:
    _C.checks.tree(tokens, parents)


def check_logits(logits, tokens) -> None:
    """logits [B, T, V] of a float dtype; every token inside the vocabulary (greedy too, unlike the C++ kernels)."""
    _C.checks.tree_logits(logits, tokens)
    _C.checks.token_range(tokens, logits.shape[2])


def check_sampling_args(tokens, logits, uniforms, temperature, top_p, top_k, draft_probs) -> None:
    _C.checks.tree_sample(tokens, logits, uniforms, float(temperature), float(top_p), int(top_k), draft_probs)


def check_kv_compact_args(k_cache, v_cache, cache_lens, accept_idx, accept_len) -> None:
    _C.checks.kv_compact(k_cache, v_cache, cache_lens, accept_idx, accept_len)
