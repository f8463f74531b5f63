"""EAGLE-2 dynamic tree growth (docs/design.md 4.2): expand the most valuable frontier level by level, then
rerank all candidates into one connected subtree.

The bookkeeping is on Python lists: a level's few candidates cost ~10 tensor ops (~30 us) otherwise.
"""
from typing import Callable, List, Optional, Protocol, Sequence

import torch

from specdec_kernels import tree

from .base import DraftShape

# (tokens [n] target ids, the parents' hidden states [n, dim], level, rows fed before, mask rows of all fed rows)
#   -> (the new nodes' hidden states [n, dim], their draft log-probs [n, draft vocab])
Expand = Callable[[torch.Tensor, torch.Tensor, int, int, List[int]], tuple]


class Growth(Protocol):
    """Decides a tree's depth and size as it grows (planner.Planner); values are the candidates' cumulative
    log-probs, levels the levels grown so far."""

    def keep_growing(self, values: Sequence[float], frontier: Sequence[float], levels: int) -> bool:
        """Whether to expand the next level, whose parents have the values `frontier`."""

    def size(self, values: Sequence[float], levels: int) -> int:
        """The nodes to keep, root included (at most shape.total_tokens)."""


def grow_tree(expand: Expand, draft_ids: List[int], root_token: int, root_hidden: torch.Tensor,
              root_log_probs: torch.Tensor, shape: DraftShape, growth: Optional[Growth] = None) -> tree.DraftTree:
    """Expand the top_k most valuable frontier nodes for `depth` levels, each proposing top_k children (value =
    cumulative log-prob), then keep the total_tokens - 1 best of all candidates in topological order. Node 0 is
    the root; draft_ids maps draft-vocabulary ids to target ids. `growth` (if given) may stop before `depth`
    levels and keep fewer nodes."""
    top_k = min(shape.top_k, len(draft_ids))
    # candidates in creation order (a parent is always created before its children); tokens are target ids
    cand_parent, cand_token, cand_value = [], [], []
    log_p, values = root_log_probs[None], [0.0]
    frontier, frontier_hidden = [-1], root_hidden[None]  # candidate index per frontier node (-1: the root)
    fed_bits = []  # per fed tree pair: its ancestors-or-self among the fed pairs, bit = row (Python ints)
    fed_row = {}  # candidate index -> its row among the fed tree pairs
    for level in range(shape.depth):
        child_log_p, child_token = (t.tolist() for t in log_p.topk(top_k, -1))  # [frontier][top_k]
        first = len(cand_token)
        for parent, value, log_ps, draft_tokens in zip(frontier, values, child_log_p, child_token):
            cand_parent += [parent] * top_k
            cand_token += [draft_ids[t] for t in draft_tokens]
            cand_value += [value + lp for lp in log_ps]
        # the next frontier: this level's top_k most valuable children (ties: created first)
        frontier = sorted(range(first, len(cand_value)), key=lambda c: -cand_value[c])[:top_k]
        values = [cand_value[c] for c in frontier]
        if level == shape.depth - 1 or (growth is not None and not growth.keep_growing(cand_value, values, level + 1)):
            break
        parents_hidden = frontier_hidden[[(c - first) // top_k for c in frontier]]
        past = len(fed_bits)
        for row, cand in enumerate(frontier):
            parent = cand_parent[cand]  # the root (-1) is committed: every pair sees it through the cache
            fed_bits.append((fed_bits[fed_row[parent]] if parent >= 0 else 0) | 1 << (past + row))
            fed_row[cand] = past + row
        tokens = torch.tensor([cand_token[cand] for cand in frontier])
        frontier_hidden, log_p = expand(tokens, parents_hidden, level, past, fed_bits)
    levels = level + 1 if shape.depth else 0
    total_tokens = shape.total_tokens if growth is None else min(growth.size(cand_value, levels), shape.total_tokens)
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
    return tree.DraftTree(torch.tensor([tokens]), torch.tensor([parents]), values=[0.0] + [cand_value[c] for c in chosen])
