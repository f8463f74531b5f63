"""Our tree attention as a transformers attention implementation: a Llama or Qwen2 model loaded with
`attn_implementation="specdec_tree"` (after `register()`) verifies a whole draft tree in one forward.

    register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="specdec_tree")
    out = model(input_ids=tree.tokens, position_ids=tree.positions(past), cache=cache, tree_mask=tree.mask())

The forward's `tree_mask` keyword (int64 [B, T, ceil(T / 64)], tree.DraftTree.mask(): node i sees node j iff
bit j of its row is set, docs/design.md 3.2) reaches every layer's attention through transformers' kwargs;
`position_ids` must be the nodes' own (cache length + depth: siblings share one). The T new tokens attend to
the whole cache before them and, among themselves, to what the mask allows. Without a tree mask attention is
causal (prefill, single-token steps, `model.generate`). Padding masks, sliding windows and softcapping are
refused with a ValueError rather than ignored.

transformers is imported by `register()` only, so that importing this module never needs it.
"""
import torch

from specdec_kernels import ops
from specdec_kernels.extras import optional_imports
from specdec_kernels.tree import MAX_TREE_NODES

NAME = "specdec_tree"
TREE_MASK_KWARG = "tree_mask"


def register() -> None:
    """Make NAME an attention implementation of transformers, with a mask function that builds no mask (the
    kernel takes the tree mask or is causal). Registering again replaces the same entries: idempotent."""
    with optional_imports():
        from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, tree_attention_forward)
    AttentionMaskInterface.register(NAME, no_mask)


def no_mask(*_, attention_mask=None, **__):
    """transformers' mask function for NAME: None (the kernel is causal or takes `tree_mask`), after refusing
    a 2-D attention mask with padding, which the kernel would otherwise silently ignore."""
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(f"{NAME} attention takes no padding: give unpadded sequences (attention_mask all "
                         "ones)")
    return None


def tree_attention_forward(module, query, key, value, attention_mask, scaling=None, tree_mask=None,
                           sliding_window=None, softcap=None, **_):
    """transformers' attention call: query [B, Hq, T, D], key/value [B, Hkv, S, D] (the cache, ending with
    the T new tokens) -> ([B, T, Hq, D], no weights). Grouped-query heads are the kernel's own (Hq a multiple
    of Hkv)."""
    if attention_mask is not None:
        raise ValueError(f"{NAME} attention builds its own mask: pass the tree as {TREE_MASK_KWARG}=, not a "
                         "4-D attention_mask")
    if sliding_window is not None or softcap is not None:
        raise ValueError(f"{NAME} attention has no sliding window or softcapping (this layer has "
                         f"sliding_window={sliding_window}, softcap={softcap})")
    t, past = query.shape[2], key.shape[2] - query.shape[2]
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [B, T or S, H, D] views
    if k.device.type != "cpu":  # the CUDA kernel reads whole contiguous caches; the CPU kernel takes strides
        k, v = k.contiguous(), v.contiguous()
    lens = torch.full((q.shape[0],), past, dtype=torch.int32, device=q.device)
    if tree_mask is not None:
        return ops.tree_attention(q, k, v, lens, tree_mask.to(q.device), scaling).to(query.dtype), None
    chunks = []  # causal: as many new tokens a call as the kernel takes, each over the cache up to its end
    for start in range(0, t, MAX_TREE_NODES):
        end = start + MAX_TREE_NODES
        chunks.append(ops.tree_attention(q[:, start:end], k[:, :past + end], v[:, :past + end], lens + start,
                                         None, scaling))
    return torch.cat(chunks, 1).to(query.dtype), None
