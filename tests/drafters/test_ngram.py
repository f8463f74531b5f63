"""Prompt lookup: its proposals equal a brute-force search, its chain lengths follow the tables, and
grafting a chain into a draft tree keeps the tree valid and the drafts it had."""
import pytest
import torch
from helpers import trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import tree
from specdec_kernels.drafters import NgramLookup
from specdec_kernels.drafters.ngram import LENGTH_IF_HEAD_AGREES, LENGTH_OTHERWISE


def brute_force_proposal(seq, max_ngram, max_length):
    """The longest suffix (<= max_ngram tokens) that also occurs earlier with a successor; its latest such
    occurrence's continuation."""
    for n in range(min(max_ngram, len(seq) - 1), 0, -1):
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start: start + n] == seq[-n:]:
                return seq[start + n: start + n + max_length], n
    return [], 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 6), st.integers(1, 8), st.data())
def test_proposal_is_the_brute_force_one(seq, max_ngram, max_length, data):
    lookup = NgramLookup(max_ngram=max_ngram)
    cut = data.draw(st.integers(0, len(seq)))  # committed in two pieces, as prompt and then steps
    lookup.extend(seq[:cut])
    lookup.extend(seq[cut:])
    assert lookup.propose(max_length) == brute_force_proposal(seq, max_ngram, max_length)


def test_a_reset_forgets_the_sequence():
    lookup = NgramLookup()
    lookup.extend([1, 2, 3, 1, 2])
    assert lookup.propose(4) == ([3, 1, 2], 2)
    lookup.reset()
    lookup.extend([1, 2])
    assert lookup.propose(4) == ([], 0)


def test_chain_lengths_follow_the_match_buckets():
    lookup = NgramLookup()
    bucket_of = {1: 0, 2: 1, 3: 2, 4: 3, 5: 3, 6: 4, 8: 4, 9: 5, 30: 5}
    for match, bucket in bucket_of.items():
        assert lookup.chain_length(match, True) == LENGTH_IF_HEAD_AGREES[bucket]
        assert lookup.chain_length(match, False) == LENGTH_OTHERWISE[bucket]
    with pytest.raises(ValueError, match="max_ngram must be at least 1"):
        NgramLookup(max_ngram=0)
    with pytest.raises(ValueError, match="one entry per match bucket"):
        NgramLookup(otherwise=(1, 2))


@settings(max_examples=200, deadline=None)
@given(trees(max_batch=1, max_nodes=12, vocab=12, allow_padding=False), st.lists(st.integers(0, 5), max_size=8),
       st.integers(1, 24))
def test_graft_keeps_the_tree_and_adds_the_chain(sample, chain, max_nodes):
    tokens, parents = sample
    draft = tree.DraftTree(tokens, parents)
    grafted = tree.graft_chain(draft, chain, max_nodes)
    t, new_t = tokens.shape[1], grafted.tokens.shape[1]
    assert torch.equal(grafted.tokens[:, :t], tokens) and torch.equal(grafted.parents[:, :t], parents)
    assert new_t <= max(t, max_nodes)
    new_tokens, new_parents = grafted.tokens[0].tolist(), grafted.parents[0].tolist()
    children = {}
    for i in range(1, new_t):  # siblings distinct; new nodes each extend the path of the one before
        assert new_tokens[i] not in children.setdefault(new_parents[i], set())
        children[new_parents[i]].add(new_tokens[i])
    node, walked = 0, 0
    for token in chain:  # the chain is a path from the root, as far as the size allowed
        step = [i for i in range(new_t) if new_parents[i] == node and new_tokens[i] == token]
        if not step:
            break
        node, walked = step[0], walked + 1
    assert walked == len(chain) or new_t >= max_nodes
    if new_t > t:
        assert walked >= 1 and all(new_parents[i] == (i - 1 if i > t else new_parents[t]) for i in range(t, new_t))


def test_graft_takes_one_tree():
    draft = tree.DraftTree(torch.zeros(2, 1, dtype=torch.long), torch.full((2, 1), -1))
    with pytest.raises(ValueError, match="one tree"):
        tree.graft_chain(draft, [1], 4)
