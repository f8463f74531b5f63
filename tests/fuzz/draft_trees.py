"""Draft trees for the fuzzer (docs/design.md 3.2): valid topologies (one node, chains, stars, random and bushy
trees, ragged batches padded with -2, the maximal 256 nodes) and the ways a parents row can break the contract
(cycles, parents after their child, out-of-range parents, a root that is not -1, padding before real nodes)."""
import torch
from corruptions import Corruption
from fuzzing import generator
from hypothesis import strategies as st
from specdec_kernels.tree import MAX_TREE_NODES, PADDING_PARENT, ROOT_PARENT

SHAPES = {
    "chain": lambda i, g: i - 1,
    "star": lambda i, g: 0,
    "random": lambda i, g: int(torch.randint(0, i, (), generator=g)),
    "bushy": lambda i, g: int(torch.randint(max(i - 3, 0), i, (), generator=g)),  # wide, a few levels deep
}


@st.composite
def draft_trees(draw, max_nodes: int = 40):
    """parents int64 [B, T]: row 0 has T real nodes, the others 1 to T then padding; T up to max_nodes, or
    (about one case in 20) the maximal 256."""
    g = generator(draw)
    t = MAX_TREE_NODES if draw(st.integers(0, 19), label="maximal") == 0 else draw(st.integers(1, max_nodes))
    rows = []
    for b in range(draw(st.integers(1, 3), label="batch")):
        real = t if b == 0 else draw(st.integers(1, t))
        shape = SHAPES[draw(st.sampled_from(sorted(SHAPES)), label="shape")]
        rows.append([ROOT_PARENT] + [shape(i, g) for i in range(1, real)] + [PADDING_PARENT] * (t - real))
    return torch.tensor(rows, dtype=torch.int64)


def real_nodes(parents_row) -> int:
    return int((parents_row != PADDING_PARENT).sum())


def _broken_row(draw, parents):
    """A copy of parents with one row broken in a drawn way."""
    parents = parents.clone()
    b, t = draw(st.integers(0, parents.shape[0] - 1)), parents.shape[1]
    if t == 1 or draw(st.integers(0, 4)) == 0:
        parents[b, 0] = draw(st.sampled_from([0, 1, PADDING_PARENT, -5]))  # the root's parent must be -1
        return parents
    i = draw(st.integers(1, t - 1))
    kind = draw(st.sampled_from(["cycle", "past T", "below -2"] + (["forward", "padding first"] if i < t - 1 else [])))
    if kind == "padding first":
        parents[b, i], parents[b, t - 1] = PADDING_PARENT, 0  # node t - 1 is real, after a padding node
    elif kind == "forward":
        parents[b, i] = draw(st.integers(i + 1, t - 1))  # not topological: a parent after its child
    else:
        offset = draw(st.integers(0, 9))
        parents[b, i] = {"cycle": i, "past T": t + offset, "below -2": -3 - offset}[kind]
    return parents


def broken_parents(names=("parents",)) -> Corruption:
    def apply(draw, args):
        args["parents"] = _broken_row(draw, args["parents"]).to(args["parents"].dtype)
        return names

    return Corruption("parents: not a tree in topological order", apply)
