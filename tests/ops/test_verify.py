import pytest
import torch
from helpers import (MARKOV, PARENTS_ROW, ROOT_P, TRIALS, VOCAB, chi_square, chi_square_critical,
                     distinct_sibling_tokens, logits_favouring_children, sampling_inputs, trees)
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import ops, reference


# ---------------------------------------------------------------- greedy
@settings(max_examples=80, deadline=None)
@given(trees(vocab=5), st.integers(0, 10**6), st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
def test_greedy_matches_reference(sample, seed, dtype):
    tokens, parents = sample
    logits = logits_favouring_children(tokens, parents, 5, seed).to(dtype)
    got = ops.tree_verify_greedy(tokens, parents, logits)
    expected = reference.tree_verify_greedy(tokens, parents, logits)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(trees(vocab=5), st.integers(0, 10**6))
def test_greedy_is_the_longest_matching_path(sample, seed):
    """Independent check: a node is on the accepted path iff it and all its ancestors match the argmax at
    their parents (the first such sibling); the path is those nodes by depth, the bonus the argmax at the deepest."""
    tokens, parents = sample
    logits = logits_favouring_children(tokens, parents, 5, seed)
    accept_idx, accept_len, bonus = ops.tree_verify_greedy(tokens, parents, logits)
    argmax = logits.argmax(-1)
    for b in range(tokens.shape[0]):
        good, matched_parents = {0}, set()
        for c in range(1, tokens.shape[1]):
            parent = int(parents[b, c])
            # duplicate sibling tokens: the first child in index order is the one taken
            if parent in good and parent not in matched_parents and int(tokens[b, c]) == int(argmax[b, parent]):
                good.add(c)
                matched_parents.add(parent)
        path = sorted(good)
        assert accept_idx[b, : len(path)].tolist() == path and int(accept_len[b]) == len(path)
        assert (accept_idx[b, len(path) :] == -1).all()
        assert int(bonus[b]) == int(argmax[b, path[-1]])


def test_greedy_ties_break_to_lowest_index():
    tokens = torch.tensor([[0, 3, 1]])
    parents = torch.tensor([[-1, 0, 0]])
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, [1, 3]] = 2.0  # tie between tokens 1 and 3 -> 1 (node 2)
    accept_idx, accept_len, _ = ops.tree_verify_greedy(tokens, parents, logits)
    assert accept_idx[0, :2].tolist() == [0, 2] and int(accept_len[0]) == 2


# ---------------------------------------------------------------- sampling: equal to the reference
@settings(max_examples=60, deadline=None)
@given(trees(vocab=6), st.integers(0, 10**6), st.sampled_from([(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 3)]),
       st.booleans())
def test_sample_matches_reference(sample, seed, params, sampled_drafts):
    tokens, parents = sample
    temperature, top_p, top_k = params
    logits, uniforms, draft_probs = sampling_inputs(tokens, parents, seed, sampled_drafts)
    got = ops.tree_verify_sample(tokens, parents, logits, temperature, top_p, top_k, draft_probs, uniforms)
    expected = reference.tree_verify_sample(tokens, parents, logits, uniforms, temperature, top_p, top_k, draft_probs)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_temperature_zero_is_greedy():
    tokens, parents = torch.tensor([[0, 2, 4]]), torch.tensor([[-1, 0, 1]])
    logits = torch.randn(1, 3, 8)
    greedy = ops.tree_verify_greedy(tokens, parents, logits)
    for a, b in zip(ops.tree_verify_sample(tokens, parents, logits, 0.0), greedy):
        assert torch.equal(a, b)


def test_never_accepts_a_zero_probability_token():
    tokens, parents = torch.tensor([[0, 1]]), torch.tensor([[-1, 0]])
    logits = torch.full((1, 2, 4), 0.0)
    logits[0, 0, 1] = float("-inf")
    uniforms = torch.zeros(1, 3)  # u = 0 would accept anything with p > 0
    accept_idx, accept_len, bonus = ops.tree_verify_sample(tokens, parents, logits, 1.0, uniforms=uniforms)
    assert int(accept_len[0]) == 1 and int(bonus[0]) != 1


# ---------------------------------------------------------------- sampling is lossless (statistical)


def emitted_pairs(sampled_drafts: bool, bias: bool = False, seed: int = 0):
    """Run TRIALS verifications of one tree shape; return the first two emitted tokens of each."""
    g = torch.Generator().manual_seed(seed)
    t = len(PARENTS_ROW)
    parents = torch.tensor([PARENTS_ROW] * TRIALS)
    q = torch.softmax(torch.randn(VOCAB, VOCAB, generator=g), -1)  # draft: after x, propose from q[x]
    root_q = torch.softmax(torch.randn(VOCAB, generator=g), -1)
    if sampled_drafts:
        tokens = torch.zeros(TRIALS, t, dtype=torch.long)
        for c in range(1, t):
            parent = PARENTS_ROW[c]
            dist = root_q.expand(TRIALS, -1) if parent == 0 else q[tokens[:, parent]]
            tokens[:, c] = torch.multinomial(dist, 1, generator=g)[:, 0]
    else:
        tokens = distinct_sibling_tokens(parents[:1], VOCAB, g).expand(TRIALS, -1).contiguous()
    logits = torch.log(MARKOV[tokens])  # node i's target: the Markov row of its token
    logits[:, 0] = torch.log(ROOT_P)
    draft_probs = None
    if sampled_drafts or bias:  # bias: a deterministic tree verified as if its tokens were sampled from q
        draft_probs = q[tokens]
        draft_probs[:, 0] = root_q
    uniforms = torch.rand(TRIALS, t + 1, generator=g)
    accept_idx, accept_len, bonus = ops.tree_verify_sample(tokens, parents, logits, 1.0,
                                                           draft_probs=draft_probs, uniforms=uniforms)
    rows = torch.arange(TRIALS)
    first = torch.where(accept_len >= 2, tokens[rows, accept_idx[:, 1].clamp(min=0)], bonus)
    second_in_tree = torch.where(accept_len >= 3, tokens[rows, accept_idx[:, 2].clamp(min=0)], bonus)
    # When the first token is the bonus, the second comes from the next step: sample it from the target.
    next_step = torch.multinomial(MARKOV[first], 1, generator=g)[:, 0]
    second = torch.where(accept_len >= 2, second_in_tree, next_step)
    return first, second


@pytest.mark.parametrize("sampled_drafts", [False, True])
def test_sampling_is_lossless(sampled_drafts):
    first, second = emitted_pairs(sampled_drafts)
    counts = torch.bincount(first, minlength=VOCAB).double()
    assert chi_square(counts, ROOT_P.double()) < chi_square_critical(VOCAB - 1)
    pair_counts = torch.bincount(first * VOCAB + second, minlength=VOCAB * VOCAB).double()
    pair_probs = (ROOT_P[:, None] * MARKOV).reshape(-1).double()
    assert chi_square(pair_counts, pair_probs) < chi_square_critical(VOCAB * VOCAB - 1)


def test_lossless_check_catches_a_biased_verifier():
    """Negative control: verifying a top-k tree with a made-up draft distribution is biased, and the
    same chi-square test rejects it."""
    first, _ = emitted_pairs(sampled_drafts=False, bias=True)
    counts = torch.bincount(first, minlength=VOCAB).double()
    assert chi_square(counts, ROOT_P.double()) > chi_square_critical(VOCAB - 1)


# ---------------------------------------------------------------- opcheck and bad inputs
def test_opcheck():
    tokens, parents = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[-1, 0, 0, 1]])
    logits = torch.randn(1, 4, 16)
    torch.library.opcheck(torch.ops.specdec.tree_verify_greedy, (tokens, parents, logits))
    uniforms = torch.rand(1, 5)
    torch.library.opcheck(torch.ops.specdec.tree_verify_sample, (tokens, parents, logits, uniforms, 0.8, 0.9, 4, None))


@pytest.mark.parametrize("parents, message", [([[-1, 2, 0]], r"must be in \[0, 1\)"), ([[0, 0, 0]], "must be -1"),
                                              ([[-1, -2, 0]], "padding nodes")])
def test_bad_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        ops.tree_verify_greedy(torch.zeros(1, 3, dtype=torch.long), torch.tensor(parents), torch.randn(1, 3, 4))


def test_too_many_nodes():
    t = 257
    with pytest.raises(ValueError, match="1 to 256 nodes"):
        ops.tree_verify_greedy(torch.zeros(1, t, dtype=torch.long), torch.arange(t)[None] - 1, torch.randn(1, t, 2))


def test_logits_shape_mismatch():
    with pytest.raises(ValueError, match=r"logits.size\(1\) must be 2"):
        ops.tree_verify_greedy(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]), torch.randn(1, 3, 4))


def test_uniforms_shape():
    with pytest.raises(ValueError, match=r"uniforms must be float32 \[B, T \+ 1\]"):
        ops.tree_verify_sample(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]), torch.randn(1, 2, 4),
                               1.0, uniforms=torch.rand(1, 2))


def test_token_out_of_vocabulary():
    with pytest.raises(ValueError, match=r"tokens must be in \[0, V = 4\)"):
        ops.tree_verify_sample(torch.tensor([[0, 9]]), torch.tensor([[-1, 0]]), torch.randn(1, 2, 4), 1.0)


def test_bad_sampling_parameters():
    args = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="top_p must be in"):
        ops.tree_verify_sample(*args, 1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.tree_verify_sample(*args, -1.0)
