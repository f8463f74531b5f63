import pytest
import torch
from helpers import trees
from hypothesis import given, settings
from specdec_kernels import reference, tree


@settings(max_examples=60, deadline=None)
@given(trees())
def test_mask_matches_reference(sample):
    tokens, parents = sample
    dense = reference.ancestor_mask(parents)
    packed = tree.pack_tree_mask(parents)
    t = parents.shape[1]
    bits = torch.arange(t)
    unpacked = ((packed[:, :, bits // 64] >> (bits % 64)) & 1).bool()
    assert torch.equal(unpacked, dense)


@settings(max_examples=60, deadline=None)
@given(trees())
def test_depths_and_positions(sample):
    tokens, parents = sample
    draft = tree.DraftTree(tokens, parents)
    depths = draft.depths()
    dense = reference.ancestor_mask(parents)
    real = parents != -2
    # depth = number of proper ancestors
    assert torch.equal(torch.where(real, dense.sum(-1) - 1, 0), depths)
    cache_lens = torch.arange(parents.shape[0], dtype=torch.int32) * 10
    assert torch.equal(draft.positions(cache_lens), cache_lens[:, None].long() + depths)


def test_mask_over_64_nodes_uses_several_words():
    parents = tree.chain_parents(1, 130)
    mask = tree.pack_tree_mask(parents)
    assert mask.shape == (1, 130, 3)
    assert mask[0, 129, 0] == -1 and mask[0, 129, 1] == -1 and mask[0, 129, 2] == 3  # bits 128, 129
    assert torch.equal(mask, tree.causal_mask(1, 130))


def test_chain_and_sizes():
    draft = tree.DraftTree.chain(torch.tensor([[3, 4, 5]]))
    assert draft.parents.tolist() == [[-1, 0, 1]] and draft.sizes().tolist() == [3]


@pytest.mark.parametrize(
    "parents, message",
    [
        ([[0, 0]], "must be -1"),
        ([[-1, 1]], "topological order"),
        ([[-1, 2, 0]], "topological order"),
        ([[-1, -3]], "topological order"),
        ([[-1, -2, 0]], "padding nodes"),
    ],
)
def test_invalid_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        tree.pack_tree_mask(torch.tensor(parents))


def test_too_many_nodes():
    with pytest.raises(ValueError, match="1 to 256 nodes"):
        tree.pack_tree_mask(tree.chain_parents(1, 257))


def test_tokens_must_match_parents():
    with pytest.raises(ValueError, match="differ"):
        tree.DraftTree(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="int64"):
        tree.DraftTree(torch.zeros(1, 2, dtype=torch.int32), torch.tensor([[-1, 0]]))
