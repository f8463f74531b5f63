"""A lean Llama-family decoder on the specdec ops (gpt-fast style): every linear layer is W4A16, attention is
`tree_attention` over a static KV cache, and one forward serves prefill, decoding and tree verification.

RoPE rotates adjacent pairs (x[2i], x[2i+1]): the layout of GGUF files, whose converter permutes the q/k rows
of Hugging Face checkpoints accordingly (attention scores are the same either way).
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from specdec_kernels import ops


@dataclass
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return nn.functional.rms_norm(x, weight.shape, weight, eps)


def rope_tables(config: ModelConfig, positions: torch.Tensor) -> torch.Tensor:
    """Unit complex rotations exp(i * position * theta_j): complex64 [B, T, 1, D/2] for positions [B, T]."""
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    return torch.polar(torch.ones_like(angles), angles)[:, :, None]


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]: rotate each adjacent pair (x[2i], x[2i+1]), read as one complex number."""
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rotations).flatten(-2)


class Block(nn.Module):
    """One decoder layer. wqkv = [wq; wk; wv] and w_gate_up = [w_gate; w_up] are single GEMMs (fewer, larger
    calls: the runner is latency-bound at small T)."""

    def __init__(self, config: ModelConfig, wqkv: nn.Module, wo: nn.Module, w_gate_up: nn.Module, w_down: nn.Module,
                 attn_norm: torch.Tensor, ffn_norm: torch.Tensor):
        super().__init__()
        self.config = config
        self.wqkv, self.wo, self.w_gate_up, self.w_down = wqkv, wo, w_gate_up, w_down
        self.register_buffer("attn_norm", attn_norm)
        self.register_buffer("ffn_norm", ffn_norm)

    def forward(self, x, rotations, k_cache, v_cache, cache_lens, write_index, tree_mask):
        c = self.config
        batch, t, _ = x.shape
        h = rms_norm(x, self.attn_norm, c.norm_eps)
        kv_dim = c.n_kv_heads * c.head_dim
        q, k, v = self.wqkv(h).split([c.dim, kv_dim, kv_dim], dim=-1)
        q = apply_rope(q.reshape(batch, t, c.n_heads, c.head_dim), rotations)
        k = apply_rope(k.reshape(batch, t, c.n_kv_heads, c.head_dim), rotations)
        v = v.view(batch, t, c.n_kv_heads, c.head_dim)
        rows = torch.arange(batch)[:, None]
        k_cache[rows, write_index] = k  # the new tokens' K/V at [cache_len, cache_len + T) (DESIGN 3.3)
        v_cache[rows, write_index] = v
        attn = ops.tree_attention(q, k_cache, v_cache, cache_lens, tree_mask)
        x = x + self.wo(attn.reshape(batch, t, c.dim))
        h = rms_norm(x, self.ffn_norm, c.norm_eps)
        gate, up = self.w_gate_up(h).chunk(2, dim=-1)
        return x + self.w_down(nn.functional.silu(gate) * up)


class Transformer(nn.Module):
    """forward(tokens [B, T], positions [B, T], tree_mask=None) -> (logits [B, T, V], final-norm hidden [B, T, dim]).

    K/V of the T tokens are written at [cache_lens, cache_lens + T); `commit(n)` then keeps n of them (plain
    decoding), `ops.kv_compact` keeps an accepted tree path.
    """

    def __init__(self, config: ModelConfig, embedding: torch.Tensor, blocks: list, out_norm: torch.Tensor,
                 lm_head: nn.Module):
        super().__init__()
        self.config = config
        self.register_buffer("embedding", embedding)
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("out_norm", out_norm)
        self.lm_head = lm_head
        self.setup_cache(1)

    def setup_cache(self, batch: int, max_seq_len: Optional[int] = None):
        c = self.config
        self.max_seq_len = max_seq_len or c.max_seq_len
        shape = (c.n_layers, batch, self.max_seq_len, c.n_kv_heads, c.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        self.cache_lens = torch.zeros(batch, dtype=torch.int32)

    def forward(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                tree_mask: Optional[torch.Tensor] = None):
        batch, t = tokens.shape
        if batch != self.cache_lens.shape[0]:
            raise ValueError(f"the cache holds {self.cache_lens.shape[0]} sequences, got a batch of {batch}")
        if int(self.cache_lens.max()) + t > self.max_seq_len:
            raise ValueError(f"context overflow: {int(self.cache_lens.max())} cached + {t} new > {self.max_seq_len}")
        write_index = self.cache_lens.long()[:, None] + torch.arange(t)
        positions = write_index if positions is None else positions
        rotations = rope_tables(self.config, positions)
        x = self.embedding[tokens]
        for layer, block in enumerate(self.blocks):
            x = block(x, rotations, self.k_cache[layer], self.v_cache[layer], self.cache_lens, write_index, tree_mask)
        hidden = rms_norm(x, self.out_norm, self.config.norm_eps)
        return self.lm_head(hidden), hidden

    def commit(self, n: int):
        """Keep the last forward's first n tokens in the cache (plain decoding / prefill)."""
        self.cache_lens += n

    def reset(self):
        self.cache_lens.zero_()
