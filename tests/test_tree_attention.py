import pytest
import torch
from conftest import TOLERANCES
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_strategies import trees
from w4a16_samples import ISAS, cpu_isa, isa_supported

from specdec_kernels import ops, reference, tree

SUPPORTED_ISAS = [isa for isa in ISAS if isa_supported(isa)]


def make_inputs(batch, t, hq, hkv, d, cache_lens, dtype=torch.float32, seed=0, spare=3):
    g = torch.Generator().manual_seed(seed)
    s_max = max(cache_lens) + t + spare
    q = torch.randn(batch, t, hq, d, generator=g).to(dtype)
    k = torch.randn(batch, s_max, hkv, d, generator=g).to(dtype)
    v = torch.randn(batch, s_max, hkv, d, generator=g).to(dtype)
    return q, k, v, torch.tensor(cache_lens, dtype=torch.int32)


def assert_matches_reference(q, k, v, lens, mask):
    got = ops.tree_attention(q, k, v, lens, mask)
    expected = reference.tree_attention(q, k, v, lens, mask)
    atol, rtol = TOLERANCES[q.dtype]
    torch.testing.assert_close(got.double(), expected.double(), atol=atol, rtol=rtol)


@settings(max_examples=40, deadline=None)
@given(trees(max_batch=2, max_nodes=40), st.sampled_from([(4, 2, 64), (9, 3, 64), (2, 1, 128), (4, 4, 32)]),
       st.integers(0, 150), st.integers(0, 10**6))
def test_random_trees_match_reference(sample, heads, longest_cache, seed):
    _, parents = sample
    hq, hkv, d = heads
    lens = [(longest_cache * (b + 1)) // parents.shape[0] for b in range(parents.shape[0])]
    q, k, v, lens = make_inputs(parents.shape[0], parents.shape[1], hq, hkv, d, lens, seed=seed)
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,cache_len", [(1, 0), (1, 200), (7, 64), (70, 90)])
def test_chains_every_dtype_and_isa(isa, dtype, t, cache_len):
    q, k, v, lens = make_inputs(1, t, 6, 2, 64, [cache_len], dtype=dtype)
    with cpu_isa(isa):
        assert_matches_reference(q, k, v, lens, None)
        # None means causal: the explicit lower-triangular mask agrees exactly
        assert torch.equal(ops.tree_attention(q, k, v, lens, None),
                           ops.tree_attention(q, k, v, lens, tree.causal_mask(1, t)))


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_batch_invariance_bitwise(isa):
    """Verifying T chain tokens at once gives, bit for bit, what decoding them one at a time gives."""
    t, cache_len = 20, 117
    q, k, v, _ = make_inputs(1, t, 9, 3, 64, [cache_len])
    with cpu_isa(isa):
        together = ops.tree_attention(q, k, v, torch.tensor([cache_len], dtype=torch.int32))
        for j in range(t):
            alone = ops.tree_attention(q[:, j : j + 1], k, v, torch.tensor([cache_len + j], dtype=torch.int32))
            assert torch.equal(alone[0, 0], together[0, j])


def test_batch_invariance_check_can_fail():
    """Negative control: the same comparison sees a changed cache entry."""
    q, k, v, _ = make_inputs(1, 2, 4, 2, 64, [10])
    together = ops.tree_attention(q, k, v, torch.tensor([10], dtype=torch.int32))
    k[0, 3] += 1e-3
    alone = ops.tree_attention(q[:, :1], k, v, torch.tensor([10], dtype=torch.int32))
    assert not torch.equal(alone[0, 0], together[0, 0])


def test_opcheck():
    q, k, v, lens = make_inputs(2, 5, 4, 2, 64, [3, 9])
    mask = tree.pack_tree_mask(torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 1, 2, -2]]))
    torch.library.opcheck(torch.ops.specdec.tree_attention, (q, k, v, lens, mask, 0.125))


def test_cache_overflow():
    q, k, v, _ = make_inputs(1, 4, 4, 2, 64, [0], spare=0)
    with pytest.raises(RuntimeError, match="cache overflow"):
        ops.tree_attention(q, k, v, torch.tensor([1], dtype=torch.int32))


def test_heads_not_a_multiple():
    q, k, v, lens = make_inputs(1, 2, 5, 2, 64, [4])
    with pytest.raises(RuntimeError, match="multiple of KV heads"):
        ops.tree_attention(q, k, v, lens)


def test_mask_shape():
    q, k, v, lens = make_inputs(1, 3, 4, 2, 64, [4])
    with pytest.raises(RuntimeError, match="tree_mask must have shape"):
        ops.tree_attention(q, k, v, lens, torch.zeros(1, 2, 1, dtype=torch.long))


def test_too_many_tokens():
    q, k, v, lens = make_inputs(1, 257, 2, 1, 16, [0])
    with pytest.raises(RuntimeError, match="T must be in"):
        ops.tree_attention(q, k, v, lens)


def test_cache_lens_dtype():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(RuntimeError, match="cache_lens must be Int"):
        ops.tree_attention(q, k, v, lens.long())
