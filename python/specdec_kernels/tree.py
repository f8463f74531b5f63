"""Draft trees (DESIGN 3.2): B trees of T nodes in topological order, their depths, positions and masks.

    tree = DraftTree(tokens=torch.tensor([[5, 7, 9, 4]]), parents=torch.tensor([[-1, 0, 0, 1]]))
    tree.depths()            # [[0, 1, 1, 2]]
    tree.mask()              # int64 [1, 4, 1]: row i has bit j set iff j is an ancestor-or-self of i
"""
import torch

MAX_TREE_NODES = 256
ROOT_PARENT, PADDING_PARENT = -1, -2


def validate_parents(parents: torch.Tensor) -> None:
    """ValueError unless every row is a tree in topological order: parents[b, 0] = -1, then 0 <= p < i, or -2
    for padding nodes, which may only follow the real nodes of their row."""
    if parents.dim() != 2 or parents.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"parents must be int32/int64 [B, T], got {parents.dtype} {tuple(parents.shape)}")
    t = parents.shape[1]
    if not 1 <= t <= MAX_TREE_NODES:
        raise ValueError(f"a tree has 1 to {MAX_TREE_NODES} nodes, got T = {t}")
    p = parents.long().cpu()
    if (p[:, 0] != ROOT_PARENT).any():
        raise ValueError("parents[:, 0] must be -1 (node 0 is the root)")
    index = torch.arange(t)
    rest = p[:, 1:]
    real = rest >= 0
    if ((rest < 0) & (rest != PADDING_PARENT)).any() or (real & (rest >= index[1:])).any():
        raise ValueError("parents must satisfy 0 <= parents[b, i] < i (topological order, no cycles) or be -2")
    padding = torch.cat([torch.zeros_like(p[:, :1], dtype=torch.bool), rest == PADDING_PARENT], 1)
    if (padding[:, :-1] & ~padding[:, 1:]).any():
        raise ValueError("padding nodes (parent -2) must come after all real nodes of their row")


def depths(parents: torch.Tensor) -> torch.Tensor:
    """int64 [B, T]: the root has depth 0, a child one more than its parent; padding nodes 0."""
    p = parents.long()
    depth = torch.zeros_like(p)
    for i in range(1, p.shape[1]):
        parent = p[:, i]
        real = parent >= 0
        depth[:, i] = torch.where(real, depth.gather(1, parent.clamp(min=0)[:, None])[:, 0] + 1, 0)
    return depth


def ancestors(parents: torch.Tensor) -> torch.Tensor:
    """bool [B, T, T]: [b, i, j] iff node j is an ancestor-or-self of node i (padding rows: only self)."""
    p = parents.long()
    batch, t = p.shape
    mask = torch.eye(t, dtype=torch.bool, device=p.device).repeat(batch, 1, 1)
    rows = torch.arange(batch, device=p.device)
    for i in range(1, t):
        parent = p[:, i]
        real = parent >= 0
        inherited = mask[rows, parent.clamp(min=0)] & real[:, None]
        mask[:, i] |= inherited
    return mask


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [..., T] -> int64 [..., ceil(T / 64)]: bit j % 64 of word j // 64."""
    t = mask.shape[-1]
    words = (t + 63) // 64
    padded = torch.nn.functional.pad(mask, (0, words * 64 - t)).reshape(*mask.shape[:-1], words, 64)
    weights = torch.ones(64, dtype=torch.int64, device=mask.device) << torch.arange(64, device=mask.device)
    return (padded.long() * weights).sum(-1)  # distinct bits: the sum is the OR (bit 63 wraps to the sign)


def pack_tree_mask(parents: torch.Tensor) -> torch.Tensor:
    """int64 [B, T, ceil(T / 64)]: bit j of row i set iff node j is an ancestor-or-self of node i."""
    validate_parents(parents)
    return pack_bits(ancestors(parents))


def causal_mask(batch: int, t: int, device=None) -> torch.Tensor:
    """The bit-packed mask of a chain (prefill, plain decoding, sequence drafts): lower-triangular."""
    return pack_bits(torch.ones(t, t, dtype=torch.bool, device=device).tril()).expand(batch, t, -1).contiguous()


def chain_parents(batch: int, t: int, device=None) -> torch.Tensor:
    """parents of a chain of t nodes: [-1, 0, 1, ..., t - 2]."""
    return (torch.arange(t, device=device) - 1).expand(batch, t).contiguous()


class DraftTree:
    """B draft trees of T nodes: node 0 is the root (the last token produced, verified with the drafts)."""

    def __init__(self, tokens: torch.Tensor, parents: torch.Tensor):
        self.tokens, self.parents = tokens, parents
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
        return pack_bits(ancestors(self.parents))

    def sizes(self) -> torch.Tensor:
        """Real (non-padding) nodes per tree."""
        return (self.parents != PADDING_PARENT).sum(1)
