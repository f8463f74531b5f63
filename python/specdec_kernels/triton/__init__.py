"""Triton kernels (GPU; tested on the CPU under TRITON_INTERPRET=1, which must be set before the first call).

Importing specdec_kernels or this package does not import triton: each entry point loads its kernel module
on first use. The tree ops take the arguments of their torch.ops.specdec schemas, in order:

    from specdec_kernels import triton as tk
    y = tk.w4a16_matmul(x, qw.qweight, qw.scales, qw.mins, qw.group_size)   # canonical weights
    out = tk.tree_attention(q, k_cache, v_cache, cache_lens, tree_mask)
"""
import importlib

_ENTRY_POINTS = {
    "w4a16_matmul": "w4a16",  # canonical weights
    "w4a16_prepack": "w4a16",  # the ops.w4a16_prepack / w4a16_gemm pair
    "w4a16_gemm": "w4a16",
    "tree_attention": "tree_attention",
    "tree_verify_greedy": "tree_verify",
    "tree_verify_sample": "tree_verify",
    "kv_compact": "kv_compact",
}
__all__ = list(_ENTRY_POINTS)


def __getattr__(name: str):
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f"{__name__}.{_ENTRY_POINTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
