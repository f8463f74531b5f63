"""CUDA tree_attention vs the reference (run wherever a GPU exists; skipped elsewhere)."""
import pytest
import torch
from helpers import TOLERANCES, make_inputs, trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import ops, reference, tree

pytestmark = pytest.mark.cuda


def assert_matches_reference(q, k, v, lens, mask):
    got = ops.tree_attention(q.cuda(), k.cuda(), v.cuda(), lens.cuda(), None if mask is None else mask.cuda())
    expected = reference.tree_attention(q, k, v, lens, mask)
    atol, rtol = TOLERANCES[q.dtype]
    torch.testing.assert_close(got.cpu().double(), expected.double(), atol=atol, rtol=rtol)


@settings(max_examples=40, deadline=None)
@given(trees(max_batch=3, max_nodes=80), st.sampled_from([(4, 2, 64), (9, 3, 64), (2, 1, 128), (32, 8, 128)]),
       st.integers(0, 1300), st.sampled_from([torch.float16, torch.bfloat16]), st.integers(0, 10**6))
def test_random_trees_match_reference(sample, heads, longest_cache, dtype, seed):
    """Ragged batches, trees across chunk (64) and split (512) boundaries, several GQA groups."""
    _, parents = sample
    hq, hkv, d = heads
    lens = [(longest_cache * (b + 1)) // parents.shape[0] for b in range(parents.shape[0])]
    q, k, v, lens = make_inputs(parents.shape[0], parents.shape[1], hq, hkv, d, lens, dtype=dtype, seed=seed)
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t,cache_len", [(1, 0), (1, 2047), (7, 64), (70, 90), (256, 600), (64, 4096)])
def test_chains(dtype, t, cache_len):
    q, k, v, lens = make_inputs(1, t, 6, 2, 64, [cache_len], dtype=dtype)
    assert_matches_reference(q, k, v, lens, None)
    q, k, v, cuda_lens = [x.cuda() for x in (q, k, v, lens)]
    # None means causal: the explicit lower-triangular mask agrees exactly
    assert torch.equal(ops.tree_attention(q, k, v, cuda_lens, None),
                       ops.tree_attention(q, k, v, cuda_lens, tree.causal_mask(1, t).cuda()))


def test_batch_invariance_bitwise():
    """Verifying T chain tokens at once gives, bit for bit, what decoding them one at a time gives."""
    t, cache_len = 40, 1000  # crosses a split boundary (512) and chunk boundaries
    q, k, v, _ = [x.cuda() for x in make_inputs(1, t, 8, 2, 128, [cache_len], dtype=torch.float16)]
    together = ops.tree_attention(q, k, v, torch.tensor([cache_len], dtype=torch.int32, device="cuda"))
    for j in range(t):
        alone = ops.tree_attention(q[:, j : j + 1], k, v, torch.tensor([cache_len + j], dtype=torch.int32,
                                                                        device="cuda"))
        assert torch.equal(alone[0, 0], together[0, j])
    # negative control: the same comparison sees a changed cache entry
    k[0, 3] += 0.5
    alone = ops.tree_attention(q[:, :1], k, v, torch.tensor([cache_len], dtype=torch.int32, device="cuda"))
    assert not torch.equal(alone[0, 0], together[0, 0])


def test_opcheck():
    q, k, v, lens = [x.cuda() for x in make_inputs(2, 5, 4, 2, 64, [3, 9], dtype=torch.float16)]
    mask = tree.pack_tree_mask(torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 1, 2, -2]])).cuda()
    torch.library.opcheck(torch.ops.specdec.tree_attention, (q, k, v, lens, mask, 0.125))


def test_bad_inputs():
    q, k, v, lens = [x.cuda() for x in make_inputs(1, 4, 4, 2, 64, [0], dtype=torch.float16, spare=0)]
    with pytest.raises(ValueError, match="cache overflow"):
        ops.tree_attention(q, k, v, lens + 1)
    with pytest.raises(ValueError, match="q must be float16 or bfloat16 on CUDA"):
        ops.tree_attention(q.float(), k.float(), v.float(), lens)
    with pytest.raises(ValueError, match="k_cache must be Half"):
        ops.tree_attention(q, k.bfloat16(), v.bfloat16(), lens)
    with pytest.raises(ValueError, match="head dim must be 64 or 128 on CUDA"):
        ops.tree_attention(q[..., :32], k[..., :32].contiguous(), v[..., :32].contiguous(), lens)
    with pytest.raises(ValueError, match="tree_mask must have shape"):
        ops.tree_attention(q, k, v, lens, torch.zeros(1, 2, 1, dtype=torch.long, device="cuda"))
