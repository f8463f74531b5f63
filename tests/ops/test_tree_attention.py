"""CPU tree_attention vs the float64 reference: random trees, chains, tile and split boundaries, every dtype
and ISA, strided inputs, bitwise batch invariance (chains and tree nodes), opcheck, and bad inputs (each in
its own function)."""
import pytest
import torch
from helpers import ATTENTION_ISAS, ISAS, TOLERANCES, cpu_isa, isa_params, make_inputs, parent_rows, trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import ops, reference, tree

ISA_PARAMS = isa_params(ATTENTION_ISAS)  # paths this CPU lacks are skipped, saying so
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (Hq, Hkv, D): SmolLM2, Llama-3-8B, MHA, MQA, small and large head dims, one not a multiple of 32
HEADS = [(9, 3, 64), (32, 8, 128), (4, 4, 32), (8, 1, 16), (2, 1, 256), (3, 1, 48)]


def assert_matches_reference(q, k, v, lens, mask, scale=None):
    got = ops.tree_attention(q, k, v, lens, mask, scale)
    expected = reference.tree_attention(q, k, v, lens, mask, scale)
    assert got.dtype == q.dtype and got.shape == q.shape
    atol, rtol = TOLERANCES[q.dtype]
    torch.testing.assert_close(got.double(), expected.double(), atol=atol, rtol=rtol)


@settings(max_examples=40, deadline=None)
@given(trees(max_batch=3, max_nodes=40), st.sampled_from(HEADS), st.integers(0, 600), st.sampled_from(DTYPES),
       st.integers(0, 10**6))
def test_random_trees_match_reference(sample, heads, longest_cache, dtype, seed):
    """Ragged batches (padding nodes), different cache lengths per row, caches across chunk/split bounds."""
    _, parents = sample
    hq, hkv, d = heads
    lens = [(longest_cache * (b + 1)) // parents.shape[0] for b in range(parents.shape[0])]
    q, k, v, lens = make_inputs(parents.shape[0], parents.shape[1], hq, hkv, d, lens, dtype=dtype, seed=seed)
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,cache_len", [(1, 0), (1, 200), (7, 64), (70, 90), (16, 250)])
def test_chains_every_dtype_and_isa(isa, dtype, t, cache_len):
    q, k, v, lens = make_inputs(1, t, 6, 2, 64, [cache_len], dtype=dtype)
    with cpu_isa(isa):
        assert_matches_reference(q, k, v, lens, None)
        # None means causal: the explicit lower-triangular mask agrees exactly, but for long causal calls on
        # `amx`, which AMX tiles take and masked calls never (other roundings)
        causal = ops.tree_attention(q, k, v, lens, None)
        masked = ops.tree_attention(q, k, v, lens, tree.causal_mask(1, t))
        if isa == "amx" and t >= 64:
            atol, rtol = TOLERANCES[dtype]
            torch.testing.assert_close(causal, masked, atol=atol, rtol=rtol)
        else:
            assert torch.equal(causal, masked)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ragged_tree_every_isa(isa, dtype):
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 3, -2, -2], [-1, 0, 1, 2, 0, 4, 4, 6, 0]])
    q, k, v, lens = make_inputs(2, 9, 8, 2, 128, [300, 17], dtype=dtype, seed=3)
    with cpu_isa(isa):
        assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


@pytest.mark.parametrize("hq,hkv,d", HEADS)
@pytest.mark.parametrize("t", [1, 2, 5, 6, 11, 16, 17, 33, 64])
def test_row_blocks_and_heads(hq, hkv, d, t):
    """Query rows T * Hq / Hkv on both sides of every 16-row vector and 3-vector register block."""
    q, k, v, lens = make_inputs(1, t, hq, hkv, d, [77], seed=t)
    assert_matches_reference(q, k, v, lens, tree.causal_mask(1, t))


@pytest.mark.parametrize("cache_len", [0, 63, 64, 65, 127, 128, 129, 191, 255, 256, 257, 511, 700])
def test_chunk_and_split_boundaries(cache_len):
    """Caches ending just before, at and after 64-position chunks and 128-position splits."""
    q, k, v, lens = make_inputs(2, 3, 4, 2, 64, [cache_len, max(cache_len - 60, 0)], seed=cache_len)
    assert_matches_reference(q, k, v, lens, None)


def test_two_mask_words_and_max_nodes():
    parents = torch.tensor([[-1] + [max(i - 1 - i % 3, 0) for i in range(1, 256)]])
    q, k, v, lens = make_inputs(1, 256, 4, 2, 32, [40])
    assert_matches_reference(q, k, v, lens, tree.pack_tree_mask(parents))


def test_custom_scale():
    q, k, v, lens = make_inputs(1, 4, 4, 2, 64, [30])
    assert_matches_reference(q, k, v, lens, None, scale=0.3)


def test_row_that_sees_nothing_is_zero():
    """An empty mask row with an empty cache has no softmax; the op returns 0 there (the reference: NaN)."""
    q, k, v, lens = make_inputs(1, 2, 2, 1, 16, [0])
    mask = torch.tensor([[[1], [0]]], dtype=torch.long)
    out = ops.tree_attention(q, k, v, lens, mask)
    assert torch.equal(out[0, 1], torch.zeros(2, 16)) and out[0, 0].abs().sum() > 0


def test_non_contiguous_inputs():
    """q as a transposed view, K/V as head slices of one fused [B, S, 2 Hkv, D] cache, a strided mask."""
    q, _, _, lens = make_inputs(2, 5, 8, 2, 64, [20, 33])
    g = torch.Generator().manual_seed(1)
    kv = torch.randn(2, 40, 4, 64, generator=g)
    k, v = kv[:, :, :2], kv[:, :, 2:]
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)
    parents = torch.tensor([[-1, 0, 0, 1, 2], [-1, 0, 1, 1, -2]])
    mask = tree.pack_tree_mask(parents).repeat(1, 1, 2)[:, :, ::2]
    assert not (q_strided.is_contiguous() or k.is_contiguous() or mask.is_contiguous())
    expected = reference.tree_attention(q, k.contiguous(), v.contiguous(), lens, tree.pack_tree_mask(parents))
    torch.testing.assert_close(ops.tree_attention(q_strided, k, v, lens, mask).double(), expected.double(),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_many_partials_in_waves():
    """Enough (KV head, split) partials to exceed the kernel's partial budget: folded wave by wave."""
    q, k, v, lens = make_inputs(1, 256, 8, 2, 256, [8200], spare=0)
    assert_matches_reference(q, k, v, lens, None)


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_batch_invariance_bitwise(isa):
    """Verifying T chain tokens at once gives, bit for bit, what decoding them one at a time gives."""
    t, cache_len = 40, 217
    for hq, hkv, d in [(9, 3, 64), (32, 8, 128)]:
        q, k, v, _ = make_inputs(1, t, hq, hkv, d, [cache_len])
        with cpu_isa(isa):
            together = ops.tree_attention(q, k, v, torch.tensor([cache_len], dtype=torch.int32))
            for j in range(t):
                alone = ops.tree_attention(q[:, j : j + 1], k, v, torch.tensor([cache_len + j], dtype=torch.int32))
                assert torch.equal(alone[0, 0], together[0, j]), (hq, j)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@settings(max_examples=25, deadline=None)
@given(parent_rows(max_nodes=90, allow_padding=False), st.sampled_from(HEADS[:3]), st.integers(0, 330),
       st.sampled_from(DTYPES), st.integers(0, 10**6))
def test_tree_node_equals_its_chain_bitwise(isa, parents, heads, cache_len, dtype, seed):
    """Each node of a tree verified at once gives, bit for bit, what decoding its root-to-node chain one token
    at a time gives: its keys sit at other cache slots than in the chain, across chunk and split bounds."""
    hq, hkv, d = heads
    t = len(parents)
    q, k, v, _ = make_inputs(1, t, hq, hkv, d, [cache_len], dtype=dtype, seed=seed)
    parents = torch.tensor([parents])
    with cpu_isa(isa):
        together = ops.tree_attention(q, k, v, torch.tensor([cache_len], dtype=torch.int32),
                                      tree.pack_tree_mask(parents))
        for node in range(t):
            chain = [node]
            while chain[-1] > 0:
                chain.append(int(parents[0, chain[-1]]))
            chain.reverse()
            k_chain, v_chain = k.clone(), v.clone()  # the chain's keys at the slots decoding gives them
            k_chain[:, cache_len:cache_len + len(chain)] = k[:, [cache_len + j for j in chain]]
            v_chain[:, cache_len:cache_len + len(chain)] = v[:, [cache_len + j for j in chain]]
            alone = ops.tree_attention(q[:, node:node + 1], k_chain, v_chain,
                                       torch.tensor([cache_len + len(chain) - 1], dtype=torch.int32))
            assert torch.equal(alone[0, 0], together[0, node]), (node, chain)


@pytest.mark.parametrize("t,cache_len", [(1, 20), (1, 127), (1, 128), (1, 300), (3, 40), (12, 700)])
def test_threads_do_not_change_results(t, cache_len):
    """Short decoding steps run on the calling thread, longer ones on all threads, with other task shapes:
    the same bits either way (and on one thread)."""
    q, k, v, lens = make_inputs(1, t, 9, 3, 64, [cache_len])
    threaded = ops.tree_attention(q, k, v, lens)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = ops.tree_attention(q, k, v, lens)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(threaded, alone)


def test_batch_invariance_check_can_fail():
    """Negative control: the same comparison sees a changed cache entry."""
    q, k, v, _ = make_inputs(1, 2, 4, 2, 64, [10])
    together = ops.tree_attention(q, k, v, torch.tensor([10], dtype=torch.int32))
    k[0, 3] += 1e-3
    alone = ops.tree_attention(q[:, :1], k, v, torch.tensor([10], dtype=torch.int32))
    assert not torch.equal(alone[0, 0], together[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    q, k, v, lens = make_inputs(2, 5, 4, 2, 64, [3, 9], dtype=dtype)
    mask = tree.pack_tree_mask(torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 1, 2, -2]]))
    torch.library.opcheck(torch.ops.specdec.tree_attention, (q, k, v, lens, mask, 0.125))
    torch.library.opcheck(torch.ops.specdec.tree_attention, (q, k, v, lens, None, 0.125))


# ---- bad inputs ----

def test_cache_overflow():
    q, k, v, _ = make_inputs(1, 4, 4, 2, 64, [0], spare=0)
    with pytest.raises(ValueError, match="cache overflow"):
        ops.tree_attention(q, k, v, torch.tensor([1], dtype=torch.int32))


def test_negative_cache_len():
    q, k, v, _ = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="cache overflow in row 0: cache_lens -1"):
        ops.tree_attention(q, k, v, torch.tensor([-1], dtype=torch.int32))


def test_heads_not_a_multiple():
    q, k, v, lens = make_inputs(1, 2, 5, 2, 64, [4])
    with pytest.raises(ValueError, match="multiple of KV heads"):
        ops.tree_attention(q, k, v, lens)


def test_head_dim_not_a_multiple_of_16():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 40, [4])
    with pytest.raises(ValueError, match="head dim must be a multiple of 16"):
        ops.tree_attention(q, k, v, lens)


def test_head_dim_mismatch():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match=r"k_cache.size\(3\) must be 64"):
        ops.tree_attention(q, k[..., :32], v[..., :32], lens)


def test_batch_mismatch():
    q, k, v, lens = make_inputs(2, 2, 4, 2, 64, [4, 4])
    with pytest.raises(ValueError, match=r"k_cache.size\(0\) must be 2"):
        ops.tree_attention(q, k[:1], v[:1], lens)
    with pytest.raises(ValueError, match=r"cache_lens.size\(0\) must be 2"):
        ops.tree_attention(q, k, v, lens[:1])


def test_value_cache_shape():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="v_cache must have the shape of k_cache"):
        ops.tree_attention(q, k, v[:, :-1], lens)


def test_dtype_mismatch():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="k_cache must be Float"):
        ops.tree_attention(q, k.bfloat16(), v.bfloat16(), lens)
    with pytest.raises(ValueError, match="v_cache must be Float"):
        ops.tree_attention(q, k, v.half(), lens)
    with pytest.raises(ValueError, match="q must be float32, bfloat16 or float16"):
        ops.tree_attention(q.double(), k.double(), v.double(), lens)


def test_head_dim_not_contiguous():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    k_strided = k.transpose(2, 3).contiguous().transpose(2, 3)
    with pytest.raises(ValueError, match="contiguous in the head dim"):
        ops.tree_attention(q, k_strided, v, lens)


def test_wrong_ranks():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="q must have 4 dims"):
        ops.tree_attention(q[0], k, v, lens)
    with pytest.raises(ValueError, match="k_cache must have 4 dims"):
        ops.tree_attention(q, k[0], v[0], lens)
    with pytest.raises(ValueError, match="cache_lens must have 1 dims"):
        ops.tree_attention(q, k, v, lens[None])


def test_mask_shape():
    q, k, v, lens = make_inputs(1, 3, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="tree_mask must have shape"):
        ops.tree_attention(q, k, v, lens, torch.zeros(1, 2, 1, dtype=torch.long))


def test_mask_dtype():
    q, k, v, lens = make_inputs(1, 3, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="tree_mask must be Long"):
        ops.tree_attention(q, k, v, lens, torch.zeros(1, 3, 1, dtype=torch.int32))


def test_too_many_tokens():
    q, k, v, lens = make_inputs(1, 257, 2, 1, 16, [0])
    with pytest.raises(ValueError, match="T must be in"):
        ops.tree_attention(q, k, v, lens)


def test_cache_lens_dtype():
    q, k, v, lens = make_inputs(1, 2, 4, 2, 64, [4])
    with pytest.raises(ValueError, match="cache_lens must be Int"):
        ops.tree_attention(q, k, v, lens.long())
