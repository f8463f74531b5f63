"""Draft trees (docs/design.md 3.2): B trees of T nodes in topological order, their depths, positions and masks.

    tree = DraftTree(tokens=torch.tensor([[5, 7, 9, 4]]), parents=torch.tensor([[-1, 0, 0, 1]]))
    tree.depths()            # [[0, 1, 1, 2]]
    tree.mask()              # int64 [1, 4, 1]: row i has bit j set iff j is an ancestor-or-self of i
"""
from typing import List, Optional

import torch

MAX_TREE_NODES = 256
ROOT_PARENT, PADDING_PARENT = -1, -2


def validate_parents(parents: torch.Tensor) -> None:
    """ValueError unless every row is a tree in topological order: parents[b, 0] = -1, then 0 <= p < i, or -2
    for padding nodes, which may only follow the real nodes of their row. The ops check the same conditions in
    C++ (csrc/include/specdec/tree_checks.h); this copy checks a DraftTree where it is built, before any op."""
    if parents.dim() != 2 or parents.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"parents must be int32/int64 [B, T], got {parents.dtype} {tuple(parents.shape)}")
    t = parents.shape[1]
    if not 1 <= t <= MAX_TREE_NODES:
        raise ValueError(f"a tree has 1 to {MAX_TREE_NODES} nodes, got T = {t}")
    for row in parents.tolist():  # Python ints: tensor ops cost ~45 us per verification step
        if row[0] != ROOT_PARENT:
            raise ValueError("parents[:, 0] must be -1 (node 0 is the root)")
        padding = False
        for i, parent in enumerate(row[1:], 1):
            if parent == PADDING_PARENT:
                padding = True
            elif not 0 <= parent < i:
                raise ValueError("parents must satisfy 0 <= parents[b, i] < i (topological order, no cycles) or be -2")
            elif padding:
                raise ValueError("padding nodes (parent -2) must come after all real nodes of their row")


def depths(parents: torch.Tensor) -> torch.Tensor:
    """int64 [B, T]: the root has depth 0, a child one more than its parent; padding nodes 0."""
    rows = []
    for row in parents.tolist():  # Python ints: a tree step builds its positions in microseconds
        depth = [0] * len(row)
        for i, parent in enumerate(row):
            depth[i] = depth[parent] + 1 if parent >= 0 else 0
        rows.append(depth)
    return torch.tensor(rows, dtype=torch.int64, device=parents.device)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [..., T] -> int64 [..., ceil(T / 64)]: bit j % 64 of word j // 64."""
    t = mask.shape[-1]
    words = (t + 63) // 64
    padded = torch.nn.functional.pad(mask, (0, words * 64 - t)).reshape(*mask.shape[:-1], words, 64)
    weights = torch.ones(64, dtype=torch.int64, device=mask.device) << torch.arange(64, device=mask.device)
    return (padded.long() * weights).sum(-1)  # distinct bits: the sum is the OR (bit 63 wraps to the sign)


def ancestor_words(parents: torch.Tensor) -> torch.Tensor:
    """int64 [B, T, ceil(T / 64)]: bit j of row i set iff node j is an ancestor-or-self of node i (padding
    rows: only self). A walk over Python ints (a node's row is its parent's plus its own bit): per-node
    tensor ops cost ~0.3 ms per 16-node verification step."""
    t, rows = parents.shape[1], []
    for row in parents.tolist():
        bits = [0] * t
        for i, parent in enumerate(row):
            bits[i] = (bits[parent] if parent >= 0 else 0) | 1 << i
        rows.append(int_rows_to_words(bits, t))
    return torch.tensor(rows, dtype=torch.int64, device=parents.device)


def int_rows_to_words(bits: list, t: int) -> list:
    """Mask rows as Python ints (bit j = column j < t) -> their int64 words [len(bits)][ceil(t / 64)]."""
    words = (t + 63) // 64
    return [[_as_int64(b >> 64 * w & _WORD) for w in range(words)] for b in bits]


_WORD = (1 << 64) - 1


def _as_int64(word: int) -> int:
    return word - (1 << 64) if word >> 63 else word


def pack_tree_mask(parents: torch.Tensor) -> torch.Tensor:
    """int64 [B, T, ceil(T / 64)]: bit j of row i set iff node j is an ancestor-or-self of node i."""
    validate_parents(parents)
    return ancestor_words(parents)


def causal_mask(batch: int, t: int, device=None) -> torch.Tensor:
    """The bit-packed mask of a chain (prefill, plain decoding, sequence drafts): lower-triangular."""
    return pack_bits(torch.ones(t, t, dtype=torch.bool, device=device).tril()).expand(batch, t, -1).contiguous()


def chain_parents(batch: int, t: int, device=None) -> torch.Tensor:
    """parents of a chain of t nodes: [-1, 0, 1, ..., t - 2]."""
    return (torch.arange(t, device=device) - 1).expand(batch, t).contiguous()


class DraftTree:
    """B draft trees of T nodes: node 0 is the root (the last token produced, verified with the drafts).
    values (optional, B = 1): the drafter's cumulative log-prob of each of its nodes' paths (the root's 0), which
    the planner learns acceptance from; nodes grafted after the drafter's have none."""

    def __init__(self, tokens: torch.Tensor, parents: torch.Tensor, values: Optional[List[float]] = None):
        self.tokens, self.parents, self.values = tokens, parents, values
        self.validate()

    @classmethod
    def chain(cls, tokens: torch.Tensor) -> "DraftTree":
        return cls(tokens, chain_parents(tokens.shape[0], tokens.shape[1], tokens.device))

    def validate(self) -> None:
        if self.tokens.dim() != 2 or self.tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be int64 [B, T], got {self.tokens.dtype} {tuple(self.tokens.shape)}")
        if self.tokens.shape != self.parents.shape:
            raise ValueError(f"tokens {tuple(self.tokens.shape)} and parents {tuple(self.parents.shape)} differ")
        validate_parents(self.parents)

    @property
    def shape(self):
        return tuple(self.tokens.shape)

    def depths(self) -> torch.Tensor:
        return depths(self.parents)

    def positions(self, cache_lens: torch.Tensor) -> torch.Tensor:
        """Position id of each node: cache_len + depth (siblings share a position)."""
        return cache_lens.long()[:, None] + self.depths()

    def mask(self) -> torch.Tensor:
        return ancestor_words(self.parents)

    def sizes(self) -> torch.Tensor:
        """Real (non-padding) nodes per tree."""
        return (self.parents != PADDING_PARENT).sum(1)


def graft_chain(draft: DraftTree, chain: list, max_nodes: int) -> DraftTree:
    """One tree (B = 1) with `chain` (token ids) as a path below its root: where a node on the way already has
    a child holding the chain's next token the path follows it, else the rest of the chain becomes new nodes
    at the end (siblings stay distinct, the order topological), as long as the tree has fewer than max_nodes."""
    if draft.tokens.shape[0] != 1:
        raise ValueError(f"graft_chain takes one tree, got B = {draft.tokens.shape[0]}")
    tokens, parents = draft.tokens[0].tolist(), draft.parents[0].tolist()
    node, added = 0, False
    for token in chain:
        child = next((i for i in range(node + 1, len(tokens)) if parents[i] == node and tokens[i] == token), None)
        if child is None:
            if len(tokens) >= max_nodes:
                break
            tokens.append(token)
            parents.append(node)
            child, added = len(tokens) - 1, True
        node = child
    return DraftTree(torch.tensor([tokens]), torch.tensor([parents]), draft.values) if added else draft
