"""CUDA tree verification and kv_compact vs the references (run wherever a GPU exists; skipped elsewhere)."""
import pytest
import torch
from helpers import (MARKOV, PARENTS_ROW, ROOT_P, TRIALS, VOCAB, chi_square, chi_square_critical,
                     distinct_sibling_tokens, logits_favouring_children, sampling_inputs, trees)
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import ops, reference

pytestmark = pytest.mark.cuda


def on_cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


def assert_same_verdict(got, expected):
    for a, b in zip(got, expected):
        assert torch.equal(a.cpu(), b)


# ---------------------------------------------------------------- greedy
@settings(max_examples=60, deadline=None)
@given(trees(vocab=5), st.integers(0, 10**6), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_greedy_matches_reference(sample, seed, dtype):
    tokens, parents = sample
    logits = logits_favouring_children(tokens, parents, 5, seed).to(dtype)
    got = ops.tree_verify_greedy(*on_cuda(tokens, parents.int(), logits))
    assert_same_verdict(got, reference.tree_verify_greedy(tokens, parents, logits))


@pytest.mark.parametrize("vocab", [1, 1023, 49152, 128256])
def test_greedy_large_vocabulary(vocab):
    """Many threads per row: the block-wide argmax, ties to the lowest index across threads."""
    g = torch.Generator().manual_seed(vocab)
    parents = torch.tensor([[-1, 0, 0, 1, 2, 3, 3, -2]])
    tokens = torch.randint(0, vocab, parents.shape, generator=g)
    logits = torch.randn(1, parents.shape[1], vocab, generator=g)
    for c in (1, 3, 5):  # the walk 0 -> 1 -> 3 -> 5, then a tie at node 5 between two far-apart tokens
        logits[0, int(parents[0, c]), tokens[0, c]] = 10.0
    logits[0, 5, [vocab - 1, vocab // 2]] = 10.0
    got = ops.tree_verify_greedy(*on_cuda(tokens, parents, logits.half()))
    assert_same_verdict(got, reference.tree_verify_greedy(tokens, parents, logits.half()))


# ---------------------------------------------------------------- sampling
@settings(max_examples=60, deadline=None)
@given(trees(vocab=6), st.integers(0, 10**6), st.sampled_from([(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 3),
                                                               (0.9, 0.5, 4)]), st.booleans())
def test_sample_matches_reference(sample, seed, params, sampled_drafts):
    tokens, parents = sample
    temperature, top_p, top_k = params
    logits, uniforms, draft_probs = sampling_inputs(tokens, parents, seed, sampled_drafts)
    got = ops.tree_verify_sample(*on_cuda(tokens, parents, logits), temperature, top_p, top_k,
                                 *on_cuda(draft_probs, uniforms))
    expected = reference.tree_verify_sample(tokens, parents, logits, uniforms, temperature, top_p, top_k, draft_probs)
    assert_same_verdict(got, expected)


@pytest.mark.parametrize("top_p,top_k", [(1.0, 50), (0.8, 0), (0.95, 200), (0.3, 7)])
@pytest.mark.parametrize("sampled_drafts", [False, True])
def test_sample_large_vocabulary(top_p, top_k, sampled_drafts):
    """top-k / top-p radix selection over a real-sized vocabulary (ties in the logits included)."""
    vocab, batch = 32000, 4
    g = torch.Generator().manual_seed(top_k)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 4, 4]] * batch)
    tokens = distinct_sibling_tokens(parents, vocab, g)
    logits = (torch.randn(batch, parents.shape[1], vocab, generator=g) * 3).round()  # many exact ties
    for c in range(1, parents.shape[1]):
        logits[:, parents[0, c], tokens[:, c]] += 8
    uniforms = torch.rand(batch, parents.shape[1] + 1, generator=g)
    draft_probs = torch.softmax(logits * 0.5, -1) if sampled_drafts else None
    got = ops.tree_verify_sample(*on_cuda(tokens, parents, logits), 0.8, top_p, top_k, *on_cuda(draft_probs, uniforms))
    expected = reference.tree_verify_sample(tokens, parents, logits, uniforms, 0.8, top_p, top_k, draft_probs)
    assert_same_verdict(got, expected)


@pytest.mark.parametrize("sampled_drafts", [False, True])
def test_sampling_is_lossless(sampled_drafts):
    """The statistical test of test_verify.py, on the GPU: first and first-two emitted tokens vs the target."""
    g = torch.Generator().manual_seed(0)
    t = len(PARENTS_ROW)
    parents = torch.tensor([PARENTS_ROW] * TRIALS)
    q = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g), -1)
    root_q = torch.softmax(torch.randn(VOCAB, generator=g), -1)
    if sampled_drafts:
        tokens = torch.zeros(TRIALS, t, dtype=torch.long)
        for c in range(1, t):
            dist = root_q.expand(TRIALS, -1) if PARENTS_ROW[c] == 0 else q[tokens[:, PARENTS_ROW[c]]]
            tokens[:, c] = torch.multinomial(dist, 1, generator=g)[:, 0]
        draft_probs = q[tokens]
        draft_probs[:, 0] = root_q
    else:
        tokens = distinct_sibling_tokens(parents[:1], VOCAB, g).expand(TRIALS, -1).contiguous()
        draft_probs = None
    logits = torch.log(MARKOV[tokens])
    logits[:, 0] = torch.log(ROOT_P)
    uniforms = torch.rand(TRIALS, t + 1, generator=g)
    accept_idx, accept_len, bonus = [x.cpu() for x in ops.tree_verify_sample(
        *on_cuda(tokens, parents, logits), 1.0, draft_probs=on_cuda(draft_probs)[0], uniforms=uniforms.cuda())]
    rows = torch.arange(TRIALS)
    first = torch.where(accept_len >= 2, tokens[rows, accept_idx[:, 1].clamp(min=0)], bonus)
    second_in_tree = torch.where(accept_len >= 3, tokens[rows, accept_idx[:, 2].clamp(min=0)], bonus)
    second = torch.where(accept_len >= 2, second_in_tree, torch.multinomial(MARKOV[first], 1, generator=g)[:, 0])
    counts = torch.bincount(first, minlength=VOCAB).double()
    assert chi_square(counts, ROOT_P.double()) < chi_square_critical(VOCAB - 1)
    pair_counts = torch.bincount(first * VOCAB + second, minlength=VOCAB * VOCAB).double()
    assert chi_square(pair_counts, (ROOT_P[:, None] * MARKOV).reshape(-1).double()) < chi_square_critical(VOCAB**2 - 1)


def test_verify_opcheck():
    tokens, parents = torch.tensor([[0, 1, 2, 3]]).cuda(), torch.tensor([[-1, 0, 0, 1]]).cuda()
    logits = torch.randn(1, 4, 16).cuda()
    torch.library.opcheck(torch.ops.specdec.tree_verify_greedy, (tokens, parents, logits))
    args = (tokens, parents, logits, torch.rand(1, 5).cuda(), 0.8, 0.9, 4, None)
    torch.library.opcheck(torch.ops.specdec.tree_verify_sample, args)


def test_verify_bad_inputs():
    tokens, logits = torch.zeros(1, 3, dtype=torch.long).cuda(), torch.randn(1, 3, 4).cuda()
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        ops.tree_verify_greedy(tokens, torch.tensor([[-1, 2, 0]]).cuda(), logits)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, V = 4\)"):
        ops.tree_verify_sample(tokens + 7, torch.tensor([[-1, 0, 0]]).cuda(), logits, 1.0)
    with pytest.raises(ValueError, match="logits must be float32, float16 or bfloat16 on CUDA"):
        ops.tree_verify_greedy(tokens, torch.tensor([[-1, 0, 0]]).cuda(), logits.double())
    with pytest.raises(ValueError, match="must be on the same device"):
        ops.tree_verify_greedy(tokens, torch.tensor([[-1, 0, 0]]).cuda(), logits.cpu())


# ---------------------------------------------------------------- kv_compact
@settings(max_examples=40, deadline=None)
@given(trees(vocab=6), st.integers(0, 10**6), st.booleans(), st.sampled_from([(3, 4), (2, 64), (3, 5)]),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_compact_matches_reference(sample, seed, stacked, heads, dtype):
    """Entries of 48 / 256 / 30 bytes: 16-, 16- and 2-byte moves."""
    tokens, parents = sample
    batch, t = tokens.shape
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, t, 6, generator=g)
    accept_idx, accept_len, _ = reference.tree_verify_greedy(tokens, parents, logits + 4 * (logits > 0))
    cache_lens = torch.randint(0, 8, (batch,), generator=g, dtype=torch.int32)
    shape = ((2,) if stacked else ()) + (batch, 8 + t + 2) + heads
    k_cache, v_cache = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    expected = [k_cache.clone(), v_cache.clone(), cache_lens.clone()]
    reference.kv_compact(*expected, accept_idx, accept_len)
    got = on_cuda(k_cache, v_cache, cache_lens)
    ops.kv_compact(*got, *on_cuda(accept_idx, accept_len))
    for a, b in zip(got, expected):
        assert torch.equal(a.cpu(), b)


def test_compact_opcheck():
    k, v = torch.randn(2, 12, 2, 4).cuda(), torch.randn(2, 12, 2, 4).cuda()
    args = (k, v, *on_cuda(torch.tensor([1, 3], dtype=torch.int32), torch.tensor([[0, 1, 3], [0, 2, -1]]),
                           torch.tensor([3, 2])))
    torch.library.opcheck(torch.ops.specdec.kv_compact, args)


@pytest.mark.parametrize(
    "accept_idx, accept_len, message",
    [([[0, 2, 5]], [3], "cache overflow"), ([[1, 2, -1]], [2], "root comes first"), ([[0, 2, 1]], [3], "must increase"),
     ([[0, 1, 2]], [4], r"must be in \[1, 3\]")],
)
def test_compact_bad_input_leaves_the_cache_untouched(accept_idx, accept_len, message):
    k, v = torch.randn(1, 10, 2, 4).cuda(), torch.randn(1, 10, 2, 4).cuda()
    before = (k.clone(), v.clone())
    lens = torch.tensor([6], dtype=torch.int32).cuda()
    with pytest.raises(ValueError, match=message):
        ops.kv_compact(k, v, lens, torch.tensor(accept_idx).cuda(), torch.tensor(accept_len).cuda())
    assert torch.equal(k, before[0]) and torch.equal(v, before[1]) and int(lens[0]) == 6
