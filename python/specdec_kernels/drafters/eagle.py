"""The EAGLE head on the specdec ops, drafting EAGLE-2 trees for a target (implements drafters.base.Drafter).

The drafter keeps the committed pairs [0, D) in its own KV cache with D = the target's cache length: the last
committed pair carries the root (the last token produced), whose children the head has just predicted. Its
decoder layer is the one of drafters.eagle_head.EagleHead, run here on the ops (W4A16 GEMMs, tree_attention
over a static cache) rather than autograd. drafters.eagle3 runs the EAGLE-3 head on the same machinery,
overriding what differs: a pair's layer input and residual (_layer_input), the output layer and its readout
(_output_layer, _log_probs).
"""
from typing import List, Optional

import torch
from torch import nn

from specdec_kernels import ops, quant, tree
from specdec_kernels.models.llama import rope_cos_sin

from .base import DraftShape
from .eagle_head import EagleHead
from .head_file import load_head
from .tree_growth import Growth, grow_tree

# The drafter's own GEMM numerics: its outputs are only proposals (the target's verification keeps decoding
# lossless whatever they are), so it takes the cheapest that keep acceptance (docs/notes.md, "drafter
# numerics"): one activation digit and 4-bit groups of 64 (it is bound by reading its 9M weights).
DRAFT_X_DIGITS = 1
DRAFT_GROUP_SIZE = 64


class EagleDrafter:
    """An EagleHead on the specdec ops (W4A16 layers, tree_attention over its own static KV cache) that
    drafts EAGLE-2 dynamic trees for a target."""

    feature_layers = ()  # no residual streams to capture: it reads the target's final-norm feature

    def __init__(self, target, head: EagleHead, quantize: bool = True, max_seq_len: Optional[int] = None,
                 x_digits: int = DRAFT_X_DIGITS, group_size: int = DRAFT_GROUP_SIZE):
        c = self.config = head.config
        self.target = target

        def to_runner(layer):
            if not quantize:
                return layer
            groups = group_size if layer.in_features % group_size == 0 else 32  # every K is a multiple of 32
            return quant.set_x_digits(quant.W4A16Linear.from_linear(layer, group_size=groups), x_digits)

        self.fc, self.wqkv, self.wo, self.w_gate_up, self.w_down = (
            to_runner(getattr(head, name)) for name in ("fc", "wqkv", "wo", "w_gate_up", "w_down"))
        self.lm_head = to_runner(self._output_layer(head))
        self.ffn_norm = head.ffn_norm.detach()
        self.draft_ids = head.draft_to_target.tolist()  # draft-vocabulary id -> target id
        self.max_seq_len = max_seq_len or target.max_seq_len  # committed pairs
        # and after them one tree's pairs: growth feeds up to (depth - 1) * top_k of them, more than the nodes the
        # target verifies (the draft is cut to the target's free slots; what growth feeds is not)
        slots = self.max_seq_len + tree.MAX_TREE_NODES
        shape = (1, slots, c.n_kv_heads, c.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        self.rope = rope_cos_sin(c, slots)
        self.length = 0  # committed pairs D

    @staticmethod
    def _output_layer(head: EagleHead) -> nn.Linear:
        """The head's output rows (the target's, frozen in the head) as a layer."""
        lm = nn.Linear(head.config.dim, head.config.vocab_size, bias=False)
        lm.weight = nn.Parameter(head.lm_rows, requires_grad=False)
        return lm

    @classmethod
    def from_file(cls, path: str, target, **kwargs) -> "EagleDrafter":
        return cls(target, load_head(path, target), **kwargs)

    def reset(self):
        self.length = 0

    def truncate(self, length: int):
        """Keep the first `length` committed pairs (hierarchical drafts roll back what the target rejected)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot keep {length} of the drafter's {self.length} committed pairs")
        self.length = length

    def _layer_input(self, tokens: torch.Tensor, hidden: torch.Tensor):
        """Pairs (tokens [n], hidden [n, dim]) -> (the decoder layer's input, the residual its attention adds
        to): both are the fused pair fc([embed(token); hidden]) here."""
        # forward, not __call__: ~2 us less a layer (as the runner's Block)
        x = self.fc.forward(torch.cat([self.target.embedding[tokens], hidden], -1))
        return x, x

    def _layer(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, past: int,
               mask: Optional[torch.Tensor]):
        """Pairs (tokens [n], hidden [n, dim]) at rope `positions` [n] -> their outputs [n, dim]. Their K/V go
        to slots [D + past, D + past + n); they attend to the committed pairs [0, D) and, under `mask`
        [1, past + n, words] (None: causal), to the `past` tree pairs fed before them and to themselves."""
        c = self.config
        n = tokens.shape[0]
        x, residual = self._layer_input(tokens, hidden)
        heads = self.wqkv.forward(x).view(1, n, -1, c.head_dim)
        q, k, v = heads.split_with_sizes([c.n_heads, c.n_kv_heads, c.n_kv_heads], dim=2)
        start = torch.tensor([self.length + past], dtype=torch.int32)
        q = ops.rope_and_cache(q, k, v, positions[None], *self.rope, self.k_cache, self.v_cache, start)
        if past:  # earlier tree pairs take part as keys only: their query rows are zeros, their outputs unused
            q = torch.cat([q.new_zeros(1, past, c.n_heads, c.head_dim), q], 1)
        lens = torch.tensor([self.length], dtype=torch.int32)
        attn = ops.tree_attention(q, self.k_cache, self.v_cache, lens, mask)[0, past:]
        x, h = ops.add_rms_norm(residual, self.wo.forward(attn.reshape(n, c.dim)), self.ffn_norm, c.norm_eps)
        return x + self.w_down.forward(ops.silu_and_mul(self.w_gate_up.forward(h)))

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.lm_head.forward(hidden).float(), -1)

    def extend(self, tokens: torch.Tensor, features: torch.Tensor):
        """Commit pairs (tokens[i] = x_{j+1}, features[i] = f_j) for j = D, D + 1, ...: tokens int64 [n], features
        [n, dim] -> (f' of the last pair [dim], its draft-vocabulary log-probs [Vd]): the root's children."""
        n = tokens.shape[0]
        if self.length + n > self.max_seq_len:
            raise ValueError(f"draft context overflow: {self.length} + {n} > {self.max_seq_len}")
        chunk = tree.MAX_TREE_NODES  # tree_attention takes at most that many new tokens
        for chunk_tokens, chunk_features in zip(tokens.split(chunk), features.float().split(chunk)):
            positions = torch.arange(self.length, self.length + chunk_tokens.shape[0])
            hidden = self._layer(chunk_tokens, chunk_features, positions, 0, None)
            self.length += chunk_tokens.shape[0]
        return hidden[-1], self._log_probs(hidden[-1:])[0]

    def grow_tree(self, root_token: int, root_hidden: torch.Tensor, root_log_probs: torch.Tensor,
                  shape: DraftShape, growth: Optional[Growth] = None) -> tree.DraftTree:
        """An EAGLE-2 dynamic tree below root_token (drafters.tree_growth). Nothing is committed."""
        return grow_tree(self._expand, self.draft_ids, root_token, root_hidden, root_log_probs, shape, growth)

    def _expand(self, tokens: torch.Tensor, parents_hidden: torch.Tensor, level: int, past: int,
                fed_bits: List[int]):
        """Feed one tree level (children `tokens` of the nodes whose hidden states are parents_hidden) after the
        `past` tree pairs fed before; fed_bits: the ancestor rows of every fed pair."""
        n = tokens.shape[0]
        positions = torch.full((n,), self.length + level)  # siblings share a position: depth below the root
        mask = torch.tensor([tree.int_rows_to_words(fed_bits, past + n)], dtype=torch.int64)
        hidden = self._layer(tokens, parents_hidden, positions, past, mask)
        return hidden, self._log_probs(hidden)
