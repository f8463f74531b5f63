"""Gemma 3 (text) on the specdec ops: the Llama runner's cache, chunking and interfaces (llama.Transformer), with
Gemma's block (docs/design.md 2.2.1).

Per block: RMSNorm -> q/k/v -> RMSNorm of each q and k head -> RoPE -> attention -> RMSNorm -> + residual ->
RMSNorm -> GeGLU MLP -> RMSNorm -> + residual. Five of every six layers attend over a sliding window with their
own RoPE base; the sixth attends globally. Embeddings are scaled by sqrt(dim) and the output layer is the
(quantized) embedding itself. Gemma's RMSNorm multiplies by (1 + w); GGUF files hold 1 + w already.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from specdec_kernels import ops
from specdec_kernels.quant import RowwiseLinear, W4A16Linear, W8A16Linear, dequantize
from specdec_kernels.quant.formats import QuantizedWeight
from specdec_kernels.reference import dequantize_w8

from .llama import Transformer, add_and_norm, base_frequencies


@dataclass
class Gemma3Config:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    sliding_window: int                # a query at position p sees keys at positions > p - sliding_window
    query_scale: float                 # query_pre_attn_scalar^-1/2
    norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0    # global layers
    local_rope_theta: float = 10_000.0  # sliding-window layers
    global_every: int = 6              # layers 5, 11, 17, ... attend globally
    max_seq_len: int = 2048

    def is_sliding(self, layer: int) -> bool:
        return (layer + 1) % self.global_every != 0


def cos_sin(head_dim: int, rope_theta: float, n_positions: int):
    """(cos, sin) float32 [n_positions, D/2] of position * theta_j: the tables of ops.rope_and_cache."""
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * base_frequencies(head_dim, rope_theta)
    return angles.cos(), angles.sin()


def quantized_rows(layer: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Rows [N] of a layer's weight, float32 [N, in_features]: the embedding of a tied output layer, exact (a Q8_0
    row is d q, as gguf dequantizes it) and without a float copy of the whole table."""
    if isinstance(layer, RowwiseLinear):
        return layer.weight[rows]
    parts = (layer.qweight[rows], layer.scales[rows], layer.mins[rows], layer.group_size)
    if isinstance(layer, W8A16Linear):
        return dequantize_w8(*parts)
    if isinstance(layer, W4A16Linear):
        return dequantize(QuantizedWeight(*parts)).float()
    raise TypeError(f"cannot read embedding rows from a {type(layer).__name__}")


def windowed_attention(q, k_cache, v_cache, cache_lens, tree_mask, positions, window: int, scale: float):
    """ops.tree_attention where a query at position p sees only the cached keys at positions > p - window (its
    tree ancestors are nearer: window > MAX_TREE_NODES). q [B, T, Hq, D], positions int64 [B, T].

    Each query whose window cuts the cache attends over the cache view from its first visible slot, p - window + 1:
    alone (T = 1) when its ancestors are the nodes before it (a chain, a prefill), else with the whole tree and its
    mask, grouped by first slot. Either way it meets its keys at the offsets at which decoding it alone would, so
    its output is that of decoding, bit for bit (batch invariance, docs/design.md 4.6)."""
    first = (positions - (window - 1)).clamp(min=0)  # [B, T]
    if not bool(first.any()):  # every query sees the whole cache
        return ops.tree_attention(q, k_cache, v_cache, cache_lens, tree_mask, scale)
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        start, lows = int(cache_lens[b]), first[b].tolist()
        depths = (positions[b] - start).tolist()
        mask = None if tree_mask is None else tree_mask[b:b + 1]
        whole = [i for i, low in enumerate(lows) if low == 0]
        groups = {}  # first slot -> the tree's queries (not chain nodes) that start there
        for i, low in enumerate(lows):
            if low and depths[i] == i:  # node i's ancestors are nodes 0..i-1: the chain attention of decoding
                lens = torch.tensor([start + i - low], dtype=torch.int32)
                out[b, i] = ops.tree_attention(q[b:b + 1, i:i + 1], k_cache[b:b + 1, low:], v_cache[b:b + 1, low:],
                                               lens, None, scale)[0, 0]
            elif low:
                groups.setdefault(low, []).append(i)
        for low, rows in [(0, whole)] * bool(whole) + list(groups.items()):
            lens = torch.tensor([start - low], dtype=torch.int32)
            out[b, rows] = ops.tree_attention(q[b:b + 1], k_cache[b:b + 1, low:], v_cache[b:b + 1, low:], lens, mask,
                                              scale)[0, rows]
    return out


class Gemma3Block(nn.Module):
    """One Gemma 3 layer. wqkv = [wq; wk; wv] and w_gate_up = [w_gate; w_up] are single GEMMs; q/k rows are in the
    runner's adjacent-pair RoPE order (the loader reorders them and the q/k norm weights alike). The residual
    stream travels as (x, pending), as in llama.Block: pending is the post-feedforward-normed MLP output."""

    def __init__(self, config: Gemma3Config, sliding: bool, wqkv: nn.Module, wo: nn.Module, w_gate_up: nn.Module,
                 w_down: nn.Module, norms: dict):
        super().__init__()
        self.config, self.sliding = config, sliding
        self.wqkv, self.wo, self.w_gate_up, self.w_down = wqkv, wo, w_gate_up, w_down
        for name in ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            self.register_buffer(name, norms[name])

    def forward(self, x, pending, positions, rope, k_cache, v_cache, cache_lens, tree_mask):
        """x, pending [B * T, dim]; positions [B, T]; rope: the model's tables by layer kind -> (x, pending)."""
        c = self.config
        batch, t = positions.shape
        x, h = add_and_norm(x, pending, self.attn_norm, c.norm_eps)
        heads = self.wqkv(h).view(batch, t, -1, c.head_dim)
        q, k, v = heads.split_with_sizes([c.n_heads, c.n_kv_heads, c.n_kv_heads], dim=2)
        q, k = ops.rms_norm(q, self.attn_q_norm, c.norm_eps), ops.rms_norm(k, self.attn_k_norm, c.norm_eps)
        q = ops.rope_and_cache(q, k, v, positions, *rope[self.sliding], k_cache, v_cache, cache_lens)
        if self.sliding:
            attn = windowed_attention(q, k_cache, v_cache, cache_lens, tree_mask, positions, c.sliding_window,
                                      c.query_scale)
        else:
            attn = ops.tree_attention(q, k_cache, v_cache, cache_lens, tree_mask, c.query_scale)
        attn = ops.rms_norm(self.wo(attn.view(batch * t, -1)), self.post_attention_norm, c.norm_eps)
        x, h = ops.add_rms_norm(x, attn, self.ffn_norm, c.norm_eps)
        gate, up = self.w_gate_up(h).chunk(2, dim=-1)  # GeGLU, GELU's tanh form
        mlp = self.w_down(nn.functional.gelu(gate, approximate="tanh") * up)
        return x, ops.rms_norm(mlp, self.post_ffw_norm, c.norm_eps)


class Gemma3(Transformer):
    """llama.Transformer's forward, cache, commit and reset over Gemma 3 blocks. `lm_head` is also the embedding
    (tied): a token's input is its dequantized row times sqrt(dim)."""

    def __init__(self, config: Gemma3Config, blocks: list, out_norm: torch.Tensor, lm_head: nn.Module):
        super().__init__(config, None, blocks, out_norm, lm_head)
        self.embed_scale = torch.tensor(config.dim ** 0.5)  # float32, as transformers scales

    def rope_tables(self, n_positions: int) -> dict:
        """{sliding: (cos, sin)}: the local RoPE base on sliding-window layers, the global one on the others."""
        c = self.config
        return {True: cos_sin(c.head_dim, c.local_rope_theta, n_positions),
                False: cos_sin(c.head_dim, c.rope_theta, n_positions)}

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return quantized_rows(self.lm_head, tokens) * self.embed_scale

    def _make_stack(self) -> Optional[object]:
        return None  # the C++ decoder stack runs Llama blocks only
