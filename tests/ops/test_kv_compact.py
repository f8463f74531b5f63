import pytest
import torch
from helpers import kv_compact_inputs, trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import ops


@settings(max_examples=40, deadline=None)
@given(trees(vocab=6), st.integers(0, 10**6), st.booleans(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_matches_reference(sample, seed, stacked, dtype):
    tokens, parents = sample
    (k_cache, v_cache, cache_lens, accept_idx, accept_len), expected = kv_compact_inputs(tokens, parents, seed,
                                                                                         stacked, dtype)
    ops.kv_compact(k_cache, v_cache, cache_lens, accept_idx, accept_len)
    assert torch.equal(k_cache, expected[0]) and torch.equal(v_cache, expected[1])
    assert torch.equal(cache_lens, expected[2])


def test_moves_the_accepted_entries():
    k = torch.arange(10.0).reshape(1, 10, 1, 1)
    v = -k.clone()
    cache_lens = torch.tensor([2], dtype=torch.int32)
    ops.kv_compact(k, v, cache_lens, torch.tensor([[0, 2, 5, -1, -1, -1]]), torch.tensor([3]))
    assert k.flatten()[:5].tolist() == [0, 1, 2, 4, 7] and int(cache_lens[0]) == 5
    assert v.flatten()[:5].tolist() == [0, -1, -2, -4, -7]


def test_opcheck():
    k, v = torch.randn(2, 12, 2, 4), torch.randn(2, 12, 2, 4)
    args = (k, v, torch.tensor([1, 3], dtype=torch.int32), torch.tensor([[0, 1, 3], [0, 2, -1]]), torch.tensor([3, 2]))
    torch.library.opcheck(torch.ops.specdec.kv_compact, args)


def _bad_call(accept_idx, accept_len, cache_lens=(6,), s_max=10):
    k = torch.randn(1, s_max, 2, 4)
    v = torch.randn(1, s_max, 2, 4)
    before = (k.clone(), v.clone())
    lens = torch.tensor(cache_lens, dtype=torch.int32)
    return k, v, lens, torch.tensor(accept_idx), torch.tensor(accept_len), before


@pytest.mark.parametrize(
    "accept_idx, accept_len, message",
    [([[0, 2, 5]], [3], "cache overflow"), ([[1, 2, -1]], [2], "root comes first"), ([[0, 2, 1]], [3], "must increase"),
     ([[0, 1, 2]], [4], r"must be in \[1, 3\]")],
)
def test_bad_input_leaves_the_cache_untouched(accept_idx, accept_len, message):
    k, v, lens, idx, n, before = _bad_call(accept_idx, accept_len)
    with pytest.raises(ValueError, match=message):
        ops.kv_compact(k, v, lens, idx, n)
    assert torch.equal(k, before[0]) and torch.equal(v, before[1]) and int(lens[0]) == 6


def test_mismatched_caches():
    with pytest.raises(ValueError, match="v_cache must have the shape of k_cache"):
        ops.kv_compact(torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 2), torch.zeros(1, dtype=torch.int32),
                       torch.tensor([[0]]), torch.tensor([1]))
