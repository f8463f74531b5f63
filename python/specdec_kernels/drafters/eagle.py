"""The EAGLE draft head (DESIGN 4.1) and the drafter that grows EAGLE-2 dynamic trees from it (4.2).

Pair j of a sequence is (token x_{j+1}, the target's final-norm feature f_j); the head maps it to a predicted
feature f'_{j+1} and, through the target's own (frozen) output rows for a reduced draft vocabulary, to logits
for x_{j+2}:

    x = fc([embed(x_{j+1}); f_j])  ->  one Llama decoder layer without its input norm  ->  f'_{j+1}
    logits = lm_rows @ f'_{j+1}      (lm_rows: [draft_vocab, dim], draft_to_target maps their ids back)

Pair j sits at rope position j. The drafter keeps the committed pairs [0, D) in its own KV cache with
D = the target's cache length: the last committed pair carries the root (the last token produced), whose
children the head has just predicted.
"""
import os
from dataclasses import asdict
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from specdec_kernels import ops, quant, tree
from specdec_kernels.models.layers import RowwiseLinear, SumOfLinears, W8A16Linear
from specdec_kernels.models.llama import ModelConfig, apply_rope, rms_norm, rope_cos_sin, rope_tables
from specdec_kernels.reference import dequantize_w8

HEADS_DIR = os.path.join(os.path.dirname(__file__), "heads")
# Draft shapes for this CPU (benchmarks/NOTES.md, "EAGLE tree shape"): keyword arguments of speculative_generate.
TREE = dict(total_tokens=4, depth=2, draft_top_k=2)
CHAIN_LENGTH = 1
# The drafter's own GEMM numerics: its outputs are only proposals (the target's verification keeps decoding
# lossless whatever they are), so it takes the cheapest that keep acceptance (NOTES, "drafter numerics"):
# one activation digit and 4-bit groups of 64 drafted as many tokens per step as two digits and groups of 32,
# for ~20% less draft time (the drafter is bound by reading its 9M weights).
DRAFT_X_DIGITS = 1
DRAFT_GROUP_SIZE = 64


def chain_shape(length: int) -> dict:
    """A chain of `length` draft tokens (after the root) as a tree shape."""
    return dict(total_tokens=length + 1, depth=length, draft_top_k=1)


# With a prompt-lookup chain grafted in (drafters.ngram), the head's chain of 1 ran fastest here: 1.33-1.45x
# against 1.26-1.34x for TREE in six runs (NOTES, "prompt lookup"); `specdec generate` drafts so.
SHAPE_WITH_LOOKUP = chain_shape(1)


def default_head_path(model_path: str) -> Optional[str]:
    """The shipped head for a GGUF file (heads/<file name>.eagle.pt), or None when there is none."""
    name = os.path.splitext(os.path.basename(model_path))[0]
    path = os.path.join(HEADS_DIR, f"{name}.eagle.pt")
    return path if os.path.exists(path) else None


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The float32 [N, K] weight a runner layer multiplies by (dequantized where it is 4-bit)."""
    if isinstance(layer, quant.W4A16Linear):
        qw = quant.QuantizedWeight(layer.qweight, layer.scales, layer.mins, layer.group_size)
        return quant.dequantize(qw).float()
    if isinstance(layer, W8A16Linear):
        return dequantize_w8(layer.qweight, layer.scales, layer.mins, layer.group_size)
    if isinstance(layer, SumOfLinears):
        return sum(dense_weight(part) for part in layer.parts)
    if isinstance(layer, (RowwiseLinear, nn.Linear)):
        return layer.weight.detach().float()
    raise TypeError(f"cannot read the weight of a {type(layer).__name__}")


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
        head = cls(config, dense_weight(target.lm_head)[draft_to_target], draft_to_target)
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

    # ------------------------------------------------------------ file format
    def save(self, path: str, **metadata) -> None:
        """Trainable weights in float16 (lm_rows are the target's: rebuilt at load) plus metadata."""
        weights = {k: v.half() for k, v in self.state_dict().items() if k not in ("lm_rows", "draft_to_target")}
        torch.save({"config": asdict(self.config), "weights": weights, "draft_to_target": self.draft_to_target,
                    "metadata": metadata}, path)

    @classmethod
    def load(cls, path: str, target) -> "EagleHead":
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = ModelConfig(**saved["config"])
        c = target.config
        if (config.dim, config.n_heads, config.n_kv_heads) != (c.dim, c.n_heads, c.n_kv_heads):
            raise ValueError(f"{path} is a head for dim {config.dim} / {config.n_heads} heads, the target has "
                             f"dim {c.dim} / {c.n_heads} heads")
        ids = saved["draft_to_target"]
        if int(ids.max()) >= c.vocab_size:
            raise ValueError(f"{path} drafts token ids up to {int(ids.max())}, the target's vocabulary has {c.vocab_size}")
        head = cls(config, dense_weight(target.lm_head)[ids], ids)
        head.load_state_dict({k: v.float() for k, v in saved["weights"].items()}, strict=False)
        head.metadata = saved.get("metadata", {})
        return head.eval()


class EagleDrafter:
    """An EagleHead on the specdec ops (W4A16 layers, tree_attention over its own static KV cache) that
    drafts EAGLE-2 dynamic trees for a target."""

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
        lm = nn.Linear(c.dim, c.vocab_size, bias=False)
        lm.weight = nn.Parameter(head.lm_rows, requires_grad=False)
        self.lm_head = to_runner(lm)
        self.ffn_norm = head.ffn_norm.detach()
        self.draft_ids = head.draft_to_target.tolist()  # draft-vocabulary id -> target id
        self.max_seq_len = max_seq_len or target.max_seq_len
        shape = (1, self.max_seq_len, c.n_kv_heads, c.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        self.rope = rope_cos_sin(c, self.max_seq_len)
        self.length = 0  # committed pairs D

    @classmethod
    def from_file(cls, path: str, target, **kwargs) -> "EagleDrafter":
        return cls(target, EagleHead.load(path, target), **kwargs)

    def reset(self):
        self.length = 0

    def _layer(self, pairs: torch.Tensor, positions: torch.Tensor, past: int, mask: Optional[torch.Tensor]):
        """pairs [n, 2 dim] at rope `positions` [n] -> f' [n, dim]. Their K/V go to slots [D + past, D + past + n);
        they attend to the committed pairs [0, D) and, under `mask` [1, past + n, words] (None: causal), to
        the `past` tree pairs fed before them and to themselves."""
        c = self.config
        n = pairs.shape[0]
        x = self.fc.forward(pairs)  # forward, not __call__: ~2 us less a layer (as the runner's Block)
        heads = self.wqkv.forward(x).view(1, n, -1, c.head_dim)
        q, k, v = heads.split_with_sizes([c.n_heads, c.n_kv_heads, c.n_kv_heads], dim=2)
        start = torch.tensor([self.length + past], dtype=torch.int32)
        q = ops.rope_and_cache(q, k, v, positions[None], *self.rope, self.k_cache, self.v_cache, start)
        if past:  # earlier tree pairs take part as keys only: their query rows are zeros, their outputs unused
            q = torch.cat([q.new_zeros(1, past, c.n_heads, c.head_dim), q], 1)
        lens = torch.tensor([self.length], dtype=torch.int32)
        attn = ops.tree_attention(q, self.k_cache, self.v_cache, lens, mask)[0, past:]
        x, h = ops.add_rms_norm(x, self.wo.forward(attn.reshape(n, c.dim)), self.ffn_norm, c.norm_eps)
        return x + self.w_down.forward(ops.silu_and_mul(self.w_gate_up.forward(h)))

    def _log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.lm_head.forward(hidden).float(), -1)

    def extend(self, tokens: torch.Tensor, features: torch.Tensor):
        """Commit pairs (tokens[i] = x_{j+1}, features[i] = f_j) for j = D, D + 1, ...: tokens int64 [n], features
        [n, dim] -> (f' of the last pair [dim], its draft-vocabulary log-probs [Vd]): the root's children."""
        n = tokens.shape[0]
        if self.length + n > self.max_seq_len:
            raise ValueError(f"draft context overflow: {self.length} + {n} > {self.max_seq_len}")
        pairs = torch.cat([self.target.embedding[tokens], features.float()], -1)
        for chunk in pairs.split(tree.MAX_TREE_NODES):  # tree_attention takes at most that many new tokens
            hidden = self._layer(chunk, torch.arange(self.length, self.length + chunk.shape[0]), 0, None)
            self.length += chunk.shape[0]
        return hidden[-1], self._log_probs(hidden[-1:])[0]

    def grow_tree(self, root_token: int, root_hidden: torch.Tensor, root_log_probs: torch.Tensor,
                  total_tokens: int, depth: int, top_k: int) -> tree.DraftTree:
        """EAGLE-2: expand the top_k most valuable frontier nodes for `depth` levels, each proposing top_k
        children (value = cumulative log-prob), then keep the total_tokens - 1 best of all candidates (a
        connected subtree) in topological order. Node 0 is the root. Nothing is committed. The bookkeeping is
        on Python lists: a level's few candidates cost ~10 tensor ops (~30 us) otherwise."""
        top_k = min(top_k, self.config.vocab_size)
        # candidates in creation order (a parent is always created before its children); tokens are target ids
        cand_parent, cand_token, cand_value = [], [], []
        log_p, values = root_log_probs[None], [0.0]
        frontier, frontier_hidden = [-1], root_hidden[None]  # candidate index per frontier node (-1: the root)
        fed_bits = []  # per fed tree pair: its ancestors-or-self among the fed pairs, bit = row (Python ints)
        fed_row = {}  # candidate index -> its row among the fed tree pairs
        for level in range(depth):
            child_log_p, child_token = (t.tolist() for t in log_p.topk(top_k, -1))  # [frontier][top_k]
            first = len(cand_token)
            for parent, value, log_ps, draft_tokens in zip(frontier, values, child_log_p, child_token):
                cand_parent += [parent] * top_k
                cand_token += [self.draft_ids[t] for t in draft_tokens]
                cand_value += [value + lp for lp in log_ps]
            if level == depth - 1:
                break
            # the next frontier: this level's top_k most valuable children (ties: created first)
            frontier = sorted(range(first, len(cand_value)), key=lambda c: -cand_value[c])[:top_k]
            values = [cand_value[c] for c in frontier]
            parents_hidden = frontier_hidden[[(c - first) // top_k for c in frontier]]
            past, n = len(fed_bits), len(frontier)
            for row, cand in enumerate(frontier):
                parent = cand_parent[cand]  # the root (-1) is committed: every pair sees it through the cache
                fed_bits.append((fed_bits[fed_row[parent]] if parent >= 0 else 0) | 1 << (past + row))
                fed_row[cand] = past + row
            tokens = torch.tensor([cand_token[cand] for cand in frontier])
            pairs = torch.cat([self.target.embedding[tokens], parents_hidden], -1)
            positions = torch.full((n,), self.length + level)
            mask = torch.tensor([tree.int_rows_to_words(fed_bits, past + n)], dtype=torch.int64)
            frontier_hidden = self._layer(pairs, positions, past, mask)
            log_p = self._log_probs(frontier_hidden)
        return select_tree(root_token, cand_parent, cand_token, cand_value, total_tokens)


def select_tree(root_token: int, cand_parent: list, cand_token: list, cand_value: list,
                total_tokens: int) -> tree.DraftTree:
    """EAGLE-2 rerank: the total_tokens - 1 candidates of highest value (ties: created first), sorted by
    creation. Values never increase from a parent to its child and parents are created first, so the
    selection is a connected subtree and creation order is topological."""
    order = sorted(range(len(cand_value)), key=lambda i: -cand_value[i])[: total_tokens - 1]  # stable: ties by creation
    chosen = sorted(order)
    node_of = {cand: i + 1 for i, cand in enumerate(chosen)}
    parents = [-1] + [node_of[cand_parent[cand]] if cand_parent[cand] >= 0 else 0 for cand in chosen]
    tokens = [root_token] + [cand_token[cand] for cand in chosen]
    return tree.DraftTree(torch.tensor([tokens]), torch.tensor([parents]))
