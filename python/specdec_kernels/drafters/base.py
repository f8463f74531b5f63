"""What the decoding loop asks of a drafter, and the shape of the draft it asks for.

A drafter keeps its own state in step with the target's committed tokens (`extend`) and grows one draft tree
per step below the last token produced (`grow_tree`); a chain is the tree with one child per node.
"""
from dataclasses import dataclass
from typing import Protocol, Tuple

import torch

from specdec_kernels.tree import DraftTree


@dataclass(frozen=True)
class DraftShape:
    """An EAGLE-2 tree: `total_tokens` nodes with the root, `depth` draft levels (the longest path has depth + 1
    nodes), `top_k` children per expanded node. top_k = 1 is a chain of `depth` draft tokens."""

    total_tokens: int
    depth: int
    top_k: int

    def __post_init__(self):
        if self.total_tokens < 1 or self.depth < 0 or self.top_k < 1:
            raise ValueError(f"a draft shape needs total_tokens >= 1, depth >= 0, top_k >= 1, got {self}")

    @classmethod
    def chain(cls, length: int) -> "DraftShape":
        """A chain of `length` draft tokens after the root."""
        return cls(total_tokens=length + 1, depth=length, top_k=1)

    def within(self, room: int) -> "DraftShape":
        """This shape cut to at most `room` nodes (the cache's free slots), root included."""
        size = min(self.total_tokens, room)
        return DraftShape(size, min(self.depth, size - 1), self.top_k)


# The shapes that decoded fastest on the CPUs measured (docs/notes.md, "EAGLE tree shape" and "prompt lookup"):
# verifying a node costs nearly a whole decoding step there from T ~ 4 nodes on, so the trees stay tiny.
DEFAULT_TREE = DraftShape(total_tokens=4, depth=2, top_k=2)
# Also the fastest under a grafted prompt-lookup chain (drafters.ngram): method chain-pld, `specdec generate`'s default.
DEFAULT_CHAIN = DraftShape.chain(1)


class Drafter(Protocol):
    """A draft model for speculative_generate (decoding.py)."""

    def reset(self) -> None:
        """Forget every committed token (a new sequence starts)."""

    def truncate(self, length: int) -> None:
        """Keep the first `length` committed pairs (hierarchical.py rolls back what its target rejected)."""

    def extend(self, tokens: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Commit tokens int64 [n] with the target's final-norm features [n, dim] of the positions before them
        -> (the hidden state of the last one [dim], its draft log-probs [draft vocab]): the root's children."""

    def grow_tree(self, root_token: int, root_hidden: torch.Tensor, root_log_probs: torch.Tensor,
                  shape: DraftShape, growth=None) -> DraftTree:
        """A draft tree of at most shape.total_tokens nodes below root_token (node 0), its depth and size decided by
        `growth` (tree_growth.Growth) when given. Commits nothing."""


class RootOnly:
    """The drafter of no model: each step's tree is the root alone, so a step verifies only what a grafted
    prompt-lookup chain adds (method pld; the root alone is a plain step)."""

    def reset(self) -> None:
        pass

    def truncate(self, length: int) -> None:
        pass

    def extend(self, tokens: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return features[-1], torch.empty(0)  # no draft vocabulary: no log-probs

    def grow_tree(self, root_token: int, root_hidden: torch.Tensor, root_log_probs: torch.Tensor,
                  shape: DraftShape, growth=None) -> DraftTree:
        return DraftTree(torch.tensor([[root_token]]), torch.tensor([[-1]]), values=[0.0])
