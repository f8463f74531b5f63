"""The Triton tree attention vs the reference (CPU: under TRITON_INTERPRET=1, fp32/fp16; bf16 on a GPU only)."""
import pytest
import torch
from helpers import TOLERANCES, make_inputs, trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import reference, tree

pytestmark = pytest.mark.triton
triton_attention = pytest.importorskip("specdec_kernels.triton.tree_attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def run(q, k, v, lens, mask=None, **kwargs):
    args = [t.to(DEVICE) if t is not None else None for t in (q, k, v, lens, mask)]
    return triton_attention.tree_attention(*args, **kwargs).cpu()


def assert_matches_reference(q, k, v, lens, mask=None, **kwargs):
    got = run(q, k, v, lens, mask, **kwargs)
    expected = reference.tree_attention(q, k, v, lens, mask)
    atol, rtol = TOLERANCES[q.dtype]
    torch.testing.assert_close(got.double(), expected.double(), atol=atol, rtol=rtol)


@settings(max_examples=15, deadline=None)
@given(trees(max_batch=2, max_nodes=40), st.sampled_from([(4, 2, 64), (9, 3, 64), (2, 1, 128), (4, 4, 32)]),
       st.integers(0, 100), st.integers(0, 10**6))
def test_random_trees_match_reference(sample, heads, longest_cache, seed):
    _, parents = sample
    hq, hkv, d = heads
    lens = [(longest_cache * (b + 1)) // parents.shape[0] for b in range(parents.shape[0])]
    q, k, v, lens = make_inputs(parents.shape[0], parents.shape[1], hq, hkv, d, lens, seed=seed)
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else []))
@pytest.mark.parametrize("t,cache_len,heads", [(1, 0, (4, 2, 64)), (1, 90, (8, 1, 128)), (7, 64, (6, 2, 64)),
                                               (70, 20, (2, 1, 64))])
def test_chains(dtype, t, cache_len, heads):
    """None means causal among the new tokens: the explicit lower-triangular mask agrees exactly."""
    q, k, v, lens = make_inputs(1, t, *heads, [cache_len], dtype=dtype)
    assert_matches_reference(q, k, v, lens)
    assert torch.equal(run(q, k, v, lens), run(q, k, v, lens, tree.causal_mask(1, t)))


def test_more_than_64_nodes_use_the_second_mask_word():
    """T = 80: nodes 64.. live in word 1; a tree whose deep nodes hang off node 70 needs both words right."""
    parents = torch.tensor([[-1] + list(range(70)) + [70 - i % 3 for i in range(9)]])
    q, k, v, lens = make_inputs(1, 80, 4, 2, 64, [5])
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


@pytest.mark.parametrize("num_splits", [2, 4])
def test_split_cache_matches_reference(num_splits):
    """The flash-decoding path (chosen from the SM count on a GPU: forced here), rows of different lengths,
    one shorter than a split."""
    parents = torch.tensor([[-1, 0, 0, 1, 2], [-1, 0, 1, -2, -2]])
    q, k, v, lens = make_inputs(2, 5, 6, 2, 64, [150, 20])
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents), num_splits=num_splits)


# ---------------------------------------------------------------- bad inputs (checked before any kernel runs)
def test_cache_overflow():
    q, k, v, _ = make_inputs(1, 4, 4, 2, 64, [0], spare=0)
    with pytest.raises(ValueError, match="cache overflow"):
        triton_attention.tree_attention(q, k, v, torch.tensor([1], dtype=torch.int32))


def test_heads_not_a_multiple():
    q, k, v, lens = make_inputs(1, 2, 5, 2, 64, [4])
    with pytest.raises(ValueError, match="multiple of KV heads"):
        triton_attention.tree_attention(q, k, v, lens)


def test_mask_shape():
    q, k, v, lens = make_inputs(1, 3, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="tree_mask must have shape"):
        triton_attention.tree_attention(q, k, v, lens, torch.zeros(1, 2, 1, dtype=torch.long))


def test_too_many_tokens():
    q, k, v, lens = make_inputs(1, 257, 2, 1, 16, [0])
    with pytest.raises(ValueError, match="T must be in"):
        triton_attention.tree_attention(q, k, v, lens)


def test_cache_lens_dtype():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="cache_lens must be Int"):
        triton_attention.tree_attention(q, k, v, lens.long())


def test_dtype_mismatch():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="k_cache must be Half"):
        triton_attention.tree_attention(q.half(), k, v, lens)


def test_head_dim():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 48, [4])
    with pytest.raises(ValueError, match="head dim must be a power of two"):
        triton_attention.tree_attention(q, k, v, lens)


def test_num_splits():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="num_splits must be a power of two"):
        triton_attention.tree_attention(q, k, v, lens, num_splits=3)
