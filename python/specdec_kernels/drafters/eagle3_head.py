"""The EAGLE-3 draft head (docs/design.md 4.10) as a trainable PyTorch module.

It differs from the EAGLE-1/2 head (eagle_head.py) in what it reads and what it learns:
- its input feature is three of the target's residual streams fused: those entering layers `feature_layers`
  (a low, a middle and a high one; vLLM's default 2, n // 2, n - 3), [3 dim] -> fc -> g [dim];
- its decoder layer reads [input_norm(embed(x)); hidden_norm(g)] (2 dim wide: q/k/v take both) and keeps g as
  the residual; its output h is the next step's g (no fc again), and logits = lm_head(norm(h));
- it owns its output layer over the reduced draft vocabulary (draft_to_target maps its ids to the target's) and
  learns only tokens (no feature regression), on its own multi-step rollouts (training-time test).

Pair j is (token x_{j+1}, fused feature at position j) at rope position j, as for the EAGLE-1/2 head.
"""
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from specdec_kernels.models.llama import ModelConfig, apply_rope, rms_norm, rope_tables
from specdec_kernels.quant import dense_weight

from .eagle_head import chain_attention


def default_feature_layers(n_layers: int) -> tuple:
    """The residual streams EAGLE-3 reads by default: those entering layers 2, n // 2 and n - 3 (vLLM's ids)."""
    return (2, n_layers // 2, n_layers - 3)


class Eagle3Head(nn.Module):
    """The trainable EAGLE-3 head (autograd, causal SDPA); drafters.eagle3 runs it on the ops."""

    def __init__(self, config: ModelConfig, feature_layers: Sequence[int], draft_to_target: torch.Tensor):
        super().__init__()
        c = self.config = config
        self.feature_layers = tuple(int(i) for i in feature_layers)
        kv_dim = c.n_kv_heads * c.head_dim
        self.fc = nn.Linear(len(self.feature_layers) * c.dim, c.dim, bias=False)
        self.input_norm = nn.Parameter(torch.ones(c.dim))   # on the token's embedding
        self.hidden_norm = nn.Parameter(torch.ones(c.dim))  # on the fused (or previous step's) feature
        self.wqkv = nn.Linear(2 * c.dim, c.dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(c.dim, c.dim, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(c.dim))
        self.w_gate_up = nn.Linear(c.dim, 2 * c.hidden_dim, bias=False)
        self.w_down = nn.Linear(c.hidden_dim, c.dim, bias=False)
        self.norm = nn.Parameter(torch.ones(c.dim))
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.register_buffer("draft_to_target", draft_to_target.long())

    @classmethod
    def from_target(cls, target, draft_to_target: torch.Tensor, feature_layers=None) -> "Eagle3Head":
        """A new head for `target` (a models.Transformer): random layer, output rows and final norm copied from the
        target's (the head starts as the target's own readout)."""
        c = target.config
        config = ModelConfig(dim=c.dim, n_layers=1, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                             hidden_dim=c.hidden_dim, vocab_size=len(draft_to_target), norm_eps=c.norm_eps,
                             rope_theta=c.rope_theta, max_seq_len=c.max_seq_len, rope_factors=c.rope_factors)
        layers = default_feature_layers(c.n_layers) if feature_layers is None else feature_layers
        check_feature_layers(layers, c.n_layers)
        head = cls(config, layers, draft_to_target)
        with torch.no_grad():
            head.lm_head.weight.copy_(dense_weight(target.lm_head, rows=draft_to_target.long()))
            head.norm.copy_(target.out_norm)
        return head

    def layer(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, attend) -> torch.Tensor:
        """The decoder layer: embeds, hidden [B, T, dim] at rope positions [B, T]; attend(q, k, v) -> attention
        [B, H, T, D] over whatever keys the caller allows -> h [B, T, dim]."""
        c = self.config
        batch, t, _ = embeds.shape
        x = torch.cat([rms_norm(embeds, self.input_norm, c.norm_eps), rms_norm(hidden, self.hidden_norm, c.norm_eps)], -1)
        q, k, v = self.wqkv(x).split([c.dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim], -1)
        rotations = rope_tables(c, positions)
        q = apply_rope(q.reshape(batch, t, c.n_heads, c.head_dim), rotations).transpose(1, 2)
        k = apply_rope(k.reshape(batch, t, c.n_kv_heads, c.head_dim), rotations).transpose(1, 2)
        v = v.reshape(batch, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        h = hidden + self.wo(attend(q, k, v).transpose(1, 2).reshape(batch, t, c.dim))
        gate, up = self.w_gate_up(rms_norm(h, self.ffn_norm, c.norm_eps)).chunk(2, -1)
        return h + self.w_down(F.silu(gate) * up)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(rms_norm(h, self.norm, self.config.norm_eps))

    def forward(self, embeds: torch.Tensor, features: torch.Tensor):
        """embeds [B, T, dim], fused features [B, T, 3 dim] (pair j at position j, causal) -> (h, logits)."""
        return self.unrolled(embeds, features, 1)[0]

    def unrolled(self, embeds: torch.Tensor, features: torch.Tensor, steps: int) -> list:
        """Training-time test: step 0 is teacher-forced on the target's fused features; step u >= 1 feeds pair j
        the token x_{j+1+u} with step u-1's own h at position j + u, as the drafter does at depth u along the
        true path, attending to the teacher-forced pairs 0..j and to pair j of steps 1..u (its chain).
        -> [(h [B, T, dim], logits [B, T, Vd])] per step; step u's last u rows are padding."""
        batch, t, _ = embeds.shape
        outputs, chain_k, chain_v, context = [], [], [], None
        hidden = self.fc(features)
        for step in range(steps):
            if step:
                embeds, hidden = F.pad(embeds[:, 1:], (0, 0, 0, 1)), outputs[-1][0]
            positions = torch.arange(step, step + t, device=embeds.device).expand(batch, t)

            def attend(q, k, v, step=step):
                nonlocal context
                if step == 0:
                    context = (k, v)
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                chain_k.append(k)
                chain_v.append(v)
                return chain_attention(q, *context, chain_k, chain_v)

            h = self.layer(embeds, hidden, positions, attend)
            outputs.append((h, self.logits(h)))
        return outputs


def check_feature_layers(layers: Sequence[int], n_layers: int) -> None:
    """Three distinct layer ids in [1, n_layers): the streams entering them (0 would be the embeddings)."""
    if len(layers) != 3 or len(set(layers)) != 3 or not all(1 <= int(i) < n_layers for i in layers):
        raise ValueError(f"EAGLE-3 reads three distinct layers in [1, {n_layers}), got {list(layers)}")
