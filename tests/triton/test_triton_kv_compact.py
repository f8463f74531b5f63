"""The Triton kv_compact vs the reference (CPU: under TRITON_INTERPRET=1; copies are exact in every dtype)."""
import pytest
import torch
from helpers import kv_compact_inputs, trees
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.triton
triton_kv = pytest.importorskip("specdec_kernels.triton.kv_compact")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@settings(max_examples=25, deadline=None)
@given(trees(vocab=6), st.integers(0, 10**6), st.booleans(), st.sampled_from([torch.float32, torch.float16]))
def test_matches_reference(sample, seed, stacked, dtype):
    tokens, parents = sample
    (k_cache, v_cache, cache_lens, accept_idx, accept_len), expected = kv_compact_inputs(tokens, parents, seed,
                                                                                         stacked, dtype)
    got = [x.to(DEVICE) for x in (k_cache, v_cache, cache_lens)]
    triton_kv.kv_compact(*got, accept_idx.to(DEVICE), accept_len.to(DEVICE))
    for a, b in zip(got, expected):
        assert torch.equal(a.cpu(), b)


def test_moves_the_accepted_entries_over_feature_blocks():
    """H * D = 1200 features: two programs per entry (BLOCK_F = 1024), the second one partial."""
    k = torch.arange(10.0)[None, :, None, None].repeat(1, 1, 3, 400)
    v = -k
    cache_lens = torch.tensor([2], dtype=torch.int32)
    got = [x.to(DEVICE) for x in (k, v, cache_lens)]
    triton_kv.kv_compact(*got, torch.tensor([[0, 2, 5, -1, -1, -1]], device=DEVICE), torch.tensor([3], device=DEVICE))
    k, v, cache_lens = (x.cpu() for x in got)
    assert (k[0, :5] == torch.tensor([0.0, 1, 2, 4, 7])[:, None, None]).all() and int(cache_lens[0]) == 5
    assert (v[0, :5] == -torch.tensor([0.0, 1, 2, 4, 7])[:, None, None]).all()
    assert (k[0, 5:] == torch.arange(5.0, 10)[:, None, None]).all()  # beyond the path: untouched


@pytest.mark.parametrize(
    "accept_idx, accept_len, message",
    [([[0, 2, 5]], [3], "cache overflow"), ([[1, 2, -1]], [2], "root comes first"), ([[0, 2, 1]], [3], "must increase"),
     ([[0, 1, 2]], [4], r"must be in \[1, 3\]")],
)
def test_bad_input_leaves_the_cache_untouched(accept_idx, accept_len, message):
    k, v = torch.randn(1, 10, 2, 4), torch.randn(1, 10, 2, 4)
    lens = torch.tensor([6], dtype=torch.int32)
    before = (k.clone(), v.clone())
    with pytest.raises(ValueError, match=message):
        triton_kv.kv_compact(k, v, lens, torch.tensor(accept_idx), torch.tensor(accept_len))
    assert torch.equal(k, before[0]) and torch.equal(v, before[1]) and int(lens[0]) == 6


def test_mismatched_caches():
    with pytest.raises(ValueError, match="v_cache must have the shape of k_cache"):
        triton_kv.kv_compact(torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 2), torch.zeros(1, dtype=torch.int32),
                             torch.tensor([[0]]), torch.tensor([1]))


def test_cache_lens_dtype():
    with pytest.raises(ValueError, match="cache_lens must be Int"):
        triton_kv.kv_compact(torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), torch.zeros(1, dtype=torch.int64),
                             torch.tensor([[0]]), torch.tensor([1]))
