"""The EAGLE draft head (docs/design.md 4.1) as a trainable PyTorch module.

Pair j of a sequence is (token x_{j+1}, the target's final-norm feature f_j); the head maps it to a predicted
feature f'_{j+1} and, through the target's own (frozen) output rows for a reduced draft vocabulary, to logits
for x_{j+2}:

    x = fc([embed(x_{j+1}); f_j])  ->  one Llama decoder layer without its input norm  ->  f'_{j+1}
    logits = lm_rows @ f'_{j+1}      (lm_rows: [draft_vocab, dim], draft_to_target maps their ids back)

Pair j sits at rope position j. This module runs on autograd with causal SDPA for training; drafters.eagle runs
the same layer on the specdec ops for decoding (a second definition because training needs autograd and
unrolled chains, decoding a static KV cache and tree masks; tests/drafters check they agree).
"""
import torch
from torch import nn
from torch.nn import functional as F

from specdec_kernels.models.llama import ModelConfig, apply_rope, rms_norm, rope_tables
from specdec_kernels.quant import dense_weight


def chain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chain_k: list, chain_v: list) -> torch.Tensor:
    """Query j [B, H, T, D] attends causally to k, v [B, Hkv, T, D] (rows 0..j) and to row j of each chain
    step's keys and values (the draft pairs between it and the context) -> [B, H, T, D]."""
    groups, t = q.shape[1] // k.shape[1], q.shape[2]

    def expand(x):  # query head h reads kv head h // groups, as SDPA's enable_gqa
        return x.repeat_interleave(groups, 1)

    scale = q.shape[-1] ** -0.5
    scores = (q @ expand(k).transpose(-1, -2) * scale).masked_fill(
        ~torch.ones(t, t, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    own = [(q * expand(key)).sum(-1, keepdim=True) * scale for key in chain_k]
    p = torch.softmax(torch.cat([scores] + own, -1), -1)
    return p[..., :t] @ expand(v) + sum(p[..., t + i, None] * expand(value) for i, value in enumerate(chain_v))


class EagleHead(nn.Module):
    """The trainable head in plain PyTorch (autograd, causal SDPA); `EagleDrafter` runs it on the ops."""

    def __init__(self, config: ModelConfig, lm_rows: torch.Tensor, draft_to_target: torch.Tensor):
        super().__init__()
        c = self.config = config
        kv_dim = c.n_kv_heads * c.head_dim
        self.fc = nn.Linear(2 * c.dim, c.dim)
        self.wqkv = nn.Linear(c.dim, c.dim + 2 * kv_dim, bias=False)
        self.wo = nn.Linear(c.dim, c.dim, bias=False)
        self.w_gate_up = nn.Linear(c.dim, 2 * c.hidden_dim, bias=False)
        self.w_down = nn.Linear(c.hidden_dim, c.dim, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(c.dim))
        self.register_buffer("lm_rows", lm_rows.float())  # frozen: the target's output rows
        self.register_buffer("draft_to_target", draft_to_target.long())

    @classmethod
    def from_target(cls, target, draft_to_target: torch.Tensor, copy_last_layer: bool = False) -> "EagleHead":
        """A randomly initialised head for `target` (a models.Transformer); copy_last_layer starts its decoder
        layer as the target's last one instead."""
        c = target.config
        config = ModelConfig(dim=c.dim, n_layers=1, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                             hidden_dim=c.hidden_dim, vocab_size=len(draft_to_target), norm_eps=c.norm_eps,
                             rope_theta=c.rope_theta, max_seq_len=c.max_seq_len, rope_factors=c.rope_factors)
        head = cls(config, dense_weight(target.lm_head, rows=draft_to_target), draft_to_target)
        if copy_last_layer:
            last = target.blocks[-1]
            with torch.no_grad():
                for name in ("wqkv", "wo", "w_gate_up", "w_down"):
                    getattr(head, name).weight.copy_(dense_weight(getattr(last, name)))
                head.ffn_norm.copy_(last.ffn_norm)
        return head

    def forward(self, embeds: torch.Tensor, features: torch.Tensor):
        """embeds, features [B, T, dim] (pair j at position j, causal) -> (f' [B, T, dim], logits [B, T, Vd])."""
        return self.unrolled(embeds, features, 1)[0]

    def unrolled(self, embeds: torch.Tensor, features: torch.Tensor, steps: int) -> list:
        """Training-time test: step 0 is the teacher-forced pass; step u >= 1 feeds pair j the token x_{j+1+u}
        with step u-1's own f' at position j + u, as the drafter does at depth u along the true path: it sees
        the teacher-forced pairs 0..j and pair j of steps 1..u (its chain). -> [(f', logits)] per step; step
        u's last u rows are padding."""
        c = self.config
        batch, t, _ = embeds.shape
        outputs, chain_k, chain_v = [], [], []
        for step in range(steps):
            if step:
                embeds, features = F.pad(embeds[:, 1:], (0, 0, 0, 1)), outputs[-1][0]
            x = self.fc(torch.cat([embeds, features], -1))
            q, k, v = self.wqkv(x).split([c.dim, c.n_kv_heads * c.head_dim, c.n_kv_heads * c.head_dim], -1)
            rotations = rope_tables(c, torch.arange(step, step + t).expand(batch, t))
            q = apply_rope(q.reshape(batch, t, c.n_heads, c.head_dim), rotations).transpose(1, 2)
            k = apply_rope(k.reshape(batch, t, c.n_kv_heads, c.head_dim), rotations).transpose(1, 2)
            v = v.reshape(batch, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
            if step == 0:
                attn, context = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), (k, v)
            else:
                chain_k.append(k)
                chain_v.append(v)
                attn = chain_attention(q, *context, chain_k, chain_v)
            x = x + self.wo(attn.transpose(1, 2).reshape(batch, t, c.dim))
            gate, up = self.w_gate_up(rms_norm(x, self.ffn_norm, c.norm_eps)).chunk(2, -1)
            x = x + self.w_down(F.silu(gate) * up)
            outputs.append((x, x @ self.lm_rows.T))
        return outputs
