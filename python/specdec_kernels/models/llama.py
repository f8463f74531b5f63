"""A lean Llama-family decoder on the specdec ops (gpt-fast style): every linear layer is W4A16, attention is
`tree_attention` over a static KV cache, and one forward serves prefill, decoding and tree verification.

RoPE rotates adjacent pairs (x[2i], x[2i+1]): the layout of GGUF Llama files, whose converter permutes the q/k
rows of Hugging Face checkpoints accordingly (attention scores are the same either way). Checkpoints that rotate
halves (x[i], x[i + D/2]) — Hugging Face directories, GGUF Qwen2 — get their q/k rows permuted at load
(`pair_rows`).
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from specdec_kernels import _C, ops
from specdec_kernels.quant import W4A16Linear, W8A16Linear, layout_changes
from specdec_kernels.quant.layers import note_layout_change
from specdec_kernels.tree import MAX_TREE_NODES


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
    rope_factors: Optional[Tuple[float, ...]] = None  # per-frequency divisors (Llama-3 scaling), D/2 of them

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# ---------------------------------------------------------------- plain-PyTorch forms (differentiable)
# Trainable heads (drafters/) build on these; the runner itself uses the fused ops below.
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return nn.functional.rms_norm(x, weight.shape, weight, eps)


def base_frequencies(head_dim: int, rope_theta: float) -> torch.Tensor:
    """theta_j = rope_theta^(-2j / D), float32 [D/2]."""
    return 1.0 / rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_frequencies(config: ModelConfig) -> torch.Tensor:
    """The rotation frequencies, float32 [D/2]: theta_j, divided by the scaling factors where there are some."""
    theta = base_frequencies(config.head_dim, config.rope_theta)
    return theta if config.rope_factors is None else theta / torch.tensor(config.rope_factors, dtype=torch.float32)


def llama3_rope_factors(head_dim: int, rope_theta: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> Tuple[float, ...]:
    """Llama-3.1 RoPE scaling as per-frequency divisors: wavelengths shorter than original / high_freq_factor
    stay, longer than original / low_freq_factor are divided by `factor`, and the band between blends the two."""
    theta = base_frequencies(head_dim, rope_theta).double()
    ratio = original_max_position_embeddings / (2 * math.pi / theta)  # original context over wavelength
    blend = ((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)  # 1: keep, 0: divide
    scaled = (1 - blend) * theta / factor + blend * theta
    return tuple((theta / scaled).tolist())


def pair_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection (or its bias) that rotates halves, reordered to rotate adjacent pairs:
    in each head, new row 2i = row i and new row 2i + 1 = row i + D/2."""
    head_dim = weight.shape[0] // n_heads
    half = torch.arange(head_dim // 2)
    within = torch.stack([half, half + head_dim // 2], dim=1).flatten()
    order = (torch.arange(n_heads)[:, None] * head_dim + within).flatten()
    return weight[order]


def half_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of pair_rows: q/k rows that rotate adjacent pairs, reordered to rotate halves."""
    halves = torch.empty_like(weight)
    halves[pair_rows(torch.arange(weight.shape[0]), n_heads)] = weight
    return halves


def rope_tables(config: ModelConfig, positions: torch.Tensor) -> torch.Tensor:
    """Unit complex rotations exp(i * position * theta_j): complex64 [B, T, 1, D/2] for positions [B, T]."""
    angles = positions.float()[..., None] * rope_frequencies(config)  # [B, T, D/2]
    return torch.polar(torch.ones_like(angles), angles)[:, :, None]


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]: rotate each adjacent pair (x[2i], x[2i+1]), read as one complex number."""
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * rotations).flatten(-2)


# ---------------------------------------------------------------- the runner
def rope_cos_sin(config: ModelConfig, n_positions: int):
    """(cos, sin) float32 [n_positions, D/2] of the angles position * theta_j (the angles of rope_tables): the
    tables of ops.rope_and_cache, computed once per cache."""
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * rope_frequencies(config)
    return angles.cos(), angles.sin()


def add_and_norm(x: torch.Tensor, pending: Optional[torch.Tensor], weight: torch.Tensor, eps: float):
    """-> (x + pending, RMSNorm of it); pending None (nothing to add yet) -> (x, RMSNorm(x))."""
    if pending is None:
        return x, ops.rms_norm(x, weight, eps)
    return ops.add_rms_norm(x, pending, weight, eps)


class Block(nn.Module):
    """One decoder layer. wqkv = [wq; wk; wv] and w_gate_up = [w_gate; w_up] are single GEMMs (fewer, larger
    calls: the runner is latency-bound at small T).

    The residual stream travels as (x, pending): the block returns its MLP output unadded, and the next
    block adds it inside its fused add + RMSNorm (one op instead of two).

    This is the layer's one definition; three others exist for a reason each: csrc/decoder_stack.cpp runs the
    same ops in the same order from C++ (no Python between ops; tests/models check it bitwise),
    drafters.eagle_head has the head's layer on autograd for training, drafters.eagle that layer on the ops."""

    def __init__(self, config: ModelConfig, wqkv: nn.Module, wo: nn.Module, w_gate_up: nn.Module, w_down: nn.Module,
                 attn_norm: torch.Tensor, ffn_norm: torch.Tensor):
        super().__init__()
        self.config = config
        self.wqkv, self.wo, self.w_gate_up, self.w_down = wqkv, wo, w_gate_up, w_down
        self.register_buffer("attn_norm", attn_norm)
        self.register_buffer("ffn_norm", ffn_norm)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        note_layout_change()  # a layer or norm replaced: the Transformer's DecoderStack is stale

    def forward(self, x, pending, positions, rope, k_cache, v_cache, cache_lens, tree_mask):
        """x, pending [B * T, dim]; positions [B, T]; rope = (cos, sin) tables -> (x, pending) of the next layer."""
        c = self.config
        layers, weights = self._modules, self._buffers  # direct reads: nn.Module.__getattr__ costs ~0.6 us a name
        # Layers run by their forward: nn.Module.__call__ (hook dispatch) costs ~2 us a call, ~0.3 ms a forward;
        # the runner registers no hooks on its own modules.
        batch, t = positions.shape
        x, h = add_and_norm(x, pending, weights["attn_norm"], c.norm_eps)
        heads = layers["wqkv"].forward(h).view(batch, t, -1, c.head_dim)
        q, k, v = heads.split_with_sizes([c.n_heads, c.n_kv_heads, c.n_kv_heads], dim=2)  # views, no copies
        # the new tokens' K/V go to [cache_len, cache_len + T) (docs/design.md 3.3)
        q = ops.rope_and_cache(q, k, v, positions, *rope, k_cache, v_cache, cache_lens)
        attn = ops.tree_attention(q, k_cache, v_cache, cache_lens, tree_mask)
        x, h = ops.add_rms_norm(x, layers["wo"].forward(attn.view(batch * t, c.dim)), weights["ffn_norm"], c.norm_eps)
        return x, layers["w_down"].forward(ops.silu_and_mul(layers["w_gate_up"].forward(h)))


class Transformer(nn.Module):
    """forward(tokens [B, T], positions [B, T], tree_mask=None) -> (logits [B, T, V], final-norm hidden [B, T, dim]).

    K/V of the T tokens are written at [cache_lens, cache_lens + T); `commit(n)` then keeps n of them (plain
    decoding), `commit_path` an accepted tree path (ops.kv_compact). `logits_to_keep=n > 0` computes the logits
    of the last n tokens only (a prefill needs one: the output head is the largest GEMM); 0 keeps all.
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
        self.layer_caches = list(zip(self.k_cache.unbind(0), self.v_cache.unbind(0)))  # views, made once
        self.rope = self.rope_tables(self.max_seq_len)  # positions of new tokens are < max_seq_len
        self._steps = torch.arange(self.max_seq_len)  # offsets of the new tokens from cache_lens

    def rope_tables(self, n_positions: int):
        """What each block's forward takes as `rope`: here the (cos, sin) tables of positions < n_positions."""
        return rope_cos_sin(self.config, n_positions)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N] -> the first block's input [N, dim]."""
        return self.embedding[tokens]

    def forward(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                tree_mask: Optional[torch.Tensor] = None, logits_to_keep: int = 0, capture: Tuple[int, ...] = ()):
        """capture: layer ids (ascending) whose entering residual streams are also returned, concatenated:
        (logits, hidden, streams [B, T, len(capture) * dim]) (EAGLE-3 drafts from them)."""
        batch, t = tokens.shape
        if batch != self.cache_lens.shape[0]:
            raise ValueError(f"the cache holds {self.cache_lens.shape[0]} sequences, got a batch of {batch}")
        longest = int(self.cache_lens.max())
        if longest + t > self.max_seq_len:
            raise ValueError(f"context overflow: {longest} cached + {t} new > {self.max_seq_len}")
        if tree_mask is None and t > MAX_TREE_NODES:
            return self._forward_in_chunks(tokens, positions, logits_to_keep, capture)
        if positions is None:
            positions = self.cache_lens[:, None] + self._steps[:t]  # int32 + int64 -> int64
        else:
            positions = positions.long()
        x, pending = self.embed(tokens.reshape(-1)), None
        stack = None if torch.compiler.is_compiling() else self._decoder_stack()  # traced: the ops one by one
        if stack is not None:
            x, pending, streams = stack.forward(x, positions, *self.rope, self.k_cache, self.v_cache, self.cache_lens,
                                                tree_mask, list(capture))
        else:
            streams = []
            for i, (block, (k_cache, v_cache)) in enumerate(zip(self.blocks, self.layer_caches)):
                if i in capture:
                    streams.append(x if pending is None else x + pending)
                x, pending = block.forward(x, pending, positions, self.rope, k_cache, v_cache, self.cache_lens,
                                           tree_mask)
        _, hidden = add_and_norm(x, pending, self.out_norm, self.config.norm_eps)
        hidden = hidden.view(batch, t, -1)
        kept = hidden[:, t - logits_to_keep:] if 0 < logits_to_keep < t else hidden
        logits = self.lm_head.forward(kept.reshape(-1, kept.shape[-1])).view(batch, kept.shape[1], -1)
        if capture:
            return logits, hidden, torch.cat(streams, -1).view(batch, t, -1)
        return logits, hidden

    def _decoder_stack(self):
        """The blocks as one C++ call (_C.DecoderStack: the same ops in the same order, so the same bits, without
        ~0.7 ms of Python per forward), or None where a layer is not a prepacked 4/8-bit CPU layer without bias.
        Made again after any layer was packed again (built, moved) or its x_digits set, or a block's layer or
        norm replaced (quant.layout_changes)."""
        changes = layout_changes()
        if self.__dict__.get("_stack_made_at") != changes:
            self._stack, self._stack_made_at = self._make_stack(), changes
        return self._stack

    def _make_stack(self):
        layers = []
        for block in self.blocks:
            linears = []
            for layer in (block.wqkv, block.wo, block.w_gate_up, block.w_down):
                bits = 4 if type(layer) is W4A16Linear else 8 if type(layer) is W8A16Linear else None
                if bits is None or layer.packed is None or layer.bias is not None or layer.qweight.device.type != "cpu":
                    return None
                linears.append(_C.PackedLinear(*layer.packed, layer.group_size, layer.out_features, layer.x_digits,
                                               bits))
            layers.append(_C.DecoderLayer(block.attn_norm, block.ffn_norm, *linears))
        c = self.config
        return _C.DecoderStack(layers, c.n_heads, c.n_kv_heads, c.head_dim, c.norm_eps)

    def _forward_in_chunks(self, tokens: torch.Tensor, positions: Optional[torch.Tensor], logits_to_keep: int,
                           capture: Tuple[int, ...] = ()):
        """A causal forward longer than tree_attention takes at once: chunk by chunk, each chunk attending to
        the cache the earlier ones wrote. The cache lengths are restored after, as for one forward."""
        t, start = tokens.shape[1], self.cache_lens.clone()
        keep = t if logits_to_keep <= 0 else min(logits_to_keep, t)
        logits, outputs = [], []
        for begin in range(0, t, MAX_TREE_NODES):
            end = min(begin + MAX_TREE_NODES, t)
            wanted = max(0, end - max(begin, t - keep))  # of this chunk's tokens, those among the last `keep`
            chunk_positions = None if positions is None else positions[:, begin:end]
            chunk_logits, *chunk_outputs = self(tokens[:, begin:end], chunk_positions, logits_to_keep=max(wanted, 1),
                                                capture=capture)
            if wanted:
                logits.append(chunk_logits[:, -wanted:])
            outputs.append(chunk_outputs)
            self.cache_lens += end - begin
        self.cache_lens.copy_(start)
        return (torch.cat(logits, 1), *(torch.cat(parts, 1) for parts in zip(*outputs)))

    def commit(self, n: int):
        """Keep the last forward's first n tokens in the cache (plain decoding / prefill)."""
        self.cache_lens += n

    def commit_path(self, accept_idx: torch.Tensor, accept_len: torch.Tensor):
        """Keep the last forward's accepted tree paths (ops.tree_verify_*'s accept_idx, accept_len) in the cache:
        ops.kv_compact."""
        ops.kv_compact(self.k_cache, self.v_cache, self.cache_lens, accept_idx, accept_len)

    def reset(self):
        self.cache_lens.zero_()
