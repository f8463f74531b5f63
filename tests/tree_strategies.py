"""Random draft trees for hypothesis, shared by the tree op tests."""
import torch
from hypothesis import strategies as st


@st.composite
def parent_rows(draw, max_nodes=24, allow_padding=True):
    """One tree row: parents[0] = -1, parents[i] in [0, i), then optional padding (-2) at the end."""
    real = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, real)]
    padding = draw(st.integers(0, 3)) if allow_padding else 0
    return parents + [-2] * padding


@st.composite
def trees(draw, max_batch=3, max_nodes=24, vocab=6, allow_padding=True):
    """(tokens int64 [B, T], parents int64 [B, T]) with ragged rows padded to one T; siblings' tokens distinct."""
    rows = [draw(parent_rows(max_nodes, allow_padding)) for _ in range(draw(st.integers(1, max_batch)))]
    t = max(len(r) for r in rows)
    parents = torch.tensor([r + [-2] * (t - len(r)) for r in rows], dtype=torch.long)
    seed = draw(st.integers(0, 2**31 - 1))
    tokens = distinct_sibling_tokens(parents, vocab, torch.Generator().manual_seed(seed))
    return tokens, parents


def distinct_sibling_tokens(parents, vocab, generator):
    """Tokens where the children of each node are distinct (as a top-k draft makes them), when vocab allows."""
    batch, t = parents.shape
    tokens = torch.randint(0, vocab, (batch, t), generator=generator)
    for b in range(batch):
        for node in range(t):
            children = [c for c in range(t) if int(parents[b, c]) == node]
            order = torch.randperm(vocab, generator=generator).tolist()
            for rank, c in enumerate(children):
                tokens[b, c] = order[rank % vocab]
    return tokens
