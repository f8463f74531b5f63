"""Speculative decoding with a transformers causal LM as the target: decoding.speculative_generate's own loop
(our drafters, tree verification by the tree ops) on a view of the model that looks, to that loop and to the
EAGLE drafter, like the runner's Transformer.

The view runs the model's forward with our tree attention (engines.hf_tree_attention) over a DynamicCache, and
keeps an accepted path's K/V as ops.kv_compact does in the runner's static cache. transformers itself is
imported only when a view starts a cache.
"""
from typing import Iterable, Optional

import torch

from specdec_kernels import decoding
from specdec_kernels.drafters import DEFAULT_TREE, DraftShape, NgramLookup, RootOnly
from specdec_kernels.extras import optional_imports
from specdec_kernels.models.hf_loader import _config as hf_config
from specdec_kernels.tree import MAX_TREE_NODES

from .hf_tree_attention import NAME


class HFTarget:
    """A transformers Llama or Qwen2 causal LM seen as the runner's Transformer: `config` (a ModelConfig), the
    model's own `embedding` and `lm_head` rows (what EagleDrafter, EagleHead.from_target and load_head read),
    `max_seq_len` (max_position_embeddings unless less is asked), and the runner's forward, commit and
    commit_path over a DynamicCache (`cache`) of `cache_lens` committed tokens. The forward needs the model
    loaded with attn_implementation NAME."""

    def __init__(self, model, max_seq_len: Optional[int] = None):
        hf = model.config
        self.model = model
        self.config = hf_config(hf.to_dict(), max_seq_len or hf.max_position_embeddings)
        self.max_seq_len = self.config.max_seq_len
        # the drafter's pairs are float32 (no copy for a float32 model)
        self.embedding = model.get_input_embeddings().weight.detach().float()
        self.lm_head = model.get_output_embeddings()
        self.cache_lens = torch.zeros(1, dtype=torch.int32)
        self.cache = None  # started by reset(): a view that only lends its rows to a drafter needs none

    def reset(self) -> None:
        """An empty cache (a new sequence starts)."""
        with optional_imports():
            from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.cache_lens.zero_()

    def __call__(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                 tree_mask: Optional[torch.Tensor] = None, logits_to_keep: int = 0):
        """tokens [1, T] at `positions` (default: causal after the committed ones) under `tree_mask` (None:
        causal) -> (logits, final-norm hidden [1, T, dim]). Their K/V follow the committed tokens: what the
        last forward left beyond those is dropped first."""
        self.cache.crop(int(self.cache_lens[0]) - self.cache.get_seq_length())
        if positions is None:
            positions = self.cache_lens.long()[:, None] + torch.arange(tokens.shape[1])
        out = self.model(input_ids=tokens, position_ids=positions, cache=self.cache, use_cache=True,
                         logits_to_keep=logits_to_keep, output_hidden_states=[-1], tree_mask=tree_mask)
        # transformers ties hidden_states[-1] to last_hidden_state, after the final norm: EAGLE's feature
        return out.logits, out.hidden_states[-1]

    def commit(self, n: int) -> None:
        """Keep the last forward's first n tokens."""
        self.cache_lens += n

    def commit_path(self, accept_idx: torch.Tensor, accept_len: torch.Tensor) -> None:
        """Keep the last forward's accepted tree path (ops.tree_verify_*'s accept_idx [1, T], accept_len [1]),
        root first, after the committed tokens: its K/V move up there (an index-select along the sequence; a
        chain's path is already there) and the rest of the tree is cropped."""
        past, n = int(self.cache_lens[0]), int(accept_len[0])
        path = accept_idx[0, :n]
        if not torch.equal(path, torch.arange(n)):
            slots = past + path
            for layer in self.cache.layers:  # keys, values [1, Hkv, S, D]
                layer.keys[:, :, past:past + n] = layer.keys.index_select(2, slots)
                layer.values[:, :, past:past + n] = layer.values.index_select(2, slots)
        self.cache.crop(past + n - self.cache.get_seq_length())
        self.cache_lens += n


def speculative_generate(model, drafter, prompt_ids: Iterable[int], max_new_tokens: int, *,
                         shape: DraftShape = DEFAULT_TREE, lookup: Optional[NgramLookup] = None,
                         stop_tokens: Iterable[int] = ()) -> decoding.GenerationResult:
    """Greedy speculative decoding of a transformers causal LM, or of an HFTarget over one (its cache then
    holds the committed tokens): each step `drafter` (an EagleDrafter over
    HFTarget(model), or None: prompt lookup alone) grows a tree of `shape`, `lookup` grafts its chain in, the
    model verifies the tree in one forward and keeps the accepted path. The tokens are those of
    model.generate(do_sample=False); the result's accepted_per_step counts the tokens each forward produced.
    An output also ends where the model's positions (max_position_embeddings) or the drafter's cache end
    (stop_reason "context_full")."""
    target = model if isinstance(model, HFTarget) else HFTarget(model, getattr(drafter, "max_seq_len", None))
    attention = target.model.config._attn_implementation
    if attention != NAME:
        raise ValueError(f"the model attends with {attention!r}: load it with attn_implementation={NAME!r} "
                         "after specdec_kernels.hf.register()")
    if shape.total_tokens > MAX_TREE_NODES:
        raise ValueError(f"a draft tree has at most {MAX_TREE_NODES} nodes, got {shape}")
    if decoding.drafter_layers(drafter):
        raise ValueError("drafters that read the target's layers (EAGLE-3) do not run on transformers models")
    return decoding.speculative_generate(target, drafter or RootOnly(), prompt_ids, max_new_tokens,
                                         stop_tokens=stop_tokens, shape=shape, lookup=lookup)
