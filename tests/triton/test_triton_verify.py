"""The Triton tree verification vs the reference, bit for bit on the same uniforms (the reference itself is
tested for losslessness statistically in test_verify.py). CPU: under TRITON_INTERPRET=1, fp32/fp16 logits."""
import pytest
import torch
from helpers import logits_favouring_children, sampling_inputs, trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import reference

pytestmark = pytest.mark.triton
triton_verify = pytest.importorskip("specdec_kernels.triton.tree_verify")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOGIT_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def on_device(*tensors):
    return [t.to(DEVICE) if t is not None else None for t in tensors]


def assert_same_verdict(got, expected):
    for a, b in zip(got, expected):
        assert torch.equal(a.cpu(), b), (got, expected)


@settings(max_examples=25, deadline=None)
@given(trees(vocab=5), st.integers(0, 10**6), st.sampled_from(LOGIT_DTYPES))
def test_greedy_matches_reference(sample, seed, dtype):
    tokens, parents = sample
    logits = logits_favouring_children(tokens, parents, 5, seed).to(dtype)
    got = triton_verify.tree_verify_greedy(*on_device(tokens, parents, logits))
    assert_same_verdict(got, reference.tree_verify_greedy(tokens, parents, logits))


def test_greedy_ties_break_to_lowest_index_across_blocks():
    """A vocabulary of 5000 spans several BLOCK_V blocks: the tie between 70 and 4500 goes to 70."""
    tokens = torch.tensor([[0, 4500, 70]])
    parents = torch.tensor([[-1, 0, 0]], dtype=torch.int32)
    logits = torch.zeros(1, 3, 5000)
    logits[0, 0, [70, 4500]] = 2.0
    logits[0, 2, 3000] = 1.0
    got = triton_verify.tree_verify_greedy(*on_device(tokens, parents, logits))
    assert_same_verdict(got, (torch.tensor([[0, 2, -1]]), torch.tensor([2]), torch.tensor([3000])))


@settings(max_examples=20, deadline=None)
@given(trees(max_batch=2, max_nodes=16, vocab=6), st.integers(0, 10**6),
       st.sampled_from([(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 3), (1.0, 0.5, 2)]), st.booleans())
def test_sample_matches_reference(sample, seed, params, sampled_drafts):
    tokens, parents = sample
    temperature, top_p, top_k = params
    logits, uniforms, draft_probs = sampling_inputs(tokens, parents, seed, sampled_drafts)
    got = triton_verify.tree_verify_sample(*on_device(tokens, parents, logits, uniforms), temperature, top_p, top_k,
                                           *on_device(draft_probs))
    expected = reference.tree_verify_sample(tokens, parents, logits, uniforms, temperature, top_p, top_k, draft_probs)
    assert_same_verdict(got, expected)


def test_sample_top_k_top_p_over_blocks():
    """V = 3000 (two BLOCK_V blocks), ties at the top-k cut: the bisections find the reference's thresholds."""
    tokens, parents = torch.tensor([[0, 5, 2900, 7]]), torch.tensor([[-1, 0, 0, 1]])
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 4, 3000, generator=g)
    logits[0, :, [5, 2900, 7, 11, 2999]] = torch.tensor([4.0, 4.0, 3.0, 3.0, 3.0])
    for top_k, top_p in [(4, 1.0), (0, 0.3), (40, 0.6)]:
        for seed in range(2):
            uniforms = torch.rand(1, 5, generator=torch.Generator().manual_seed(seed))
            got = triton_verify.tree_verify_sample(*on_device(tokens, parents, logits, uniforms), 0.9, top_p, top_k)
            assert_same_verdict(got, reference.tree_verify_sample(tokens, parents, logits, uniforms, 0.9, top_p,
                                                                  top_k))


def test_never_accepts_a_zero_probability_token():
    tokens, parents = torch.tensor([[0, 1]]), torch.tensor([[-1, 0]])
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 1] = float("-inf")
    uniforms = torch.zeros(1, 3)  # u = 0 would accept anything with p > 0
    for draft_probs in (None, torch.full((1, 2, 4), 0.25)):
        _, accept_len, bonus = triton_verify.tree_verify_sample(*on_device(tokens, parents, logits, uniforms), 1.0,
                                                                draft_probs=on_device(draft_probs)[0])
        assert int(accept_len[0]) == 1 and int(bonus[0]) != 1


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("parents, message", [([[-1, 2, 0]], "topological order"), ([[0, 0, 0]], "must be -1"),
                                              ([[-1, -2, 0]], "padding nodes")])
def test_bad_parents(parents, message):
    with pytest.raises(ValueError, match=message):
        triton_verify.tree_verify_greedy(torch.zeros(1, 3, dtype=torch.long), torch.tensor(parents),
                                         torch.randn(1, 3, 4))


def test_too_many_nodes():
    t = 257
    with pytest.raises(ValueError, match="1 to 256 nodes"):
        triton_verify.tree_verify_greedy(torch.zeros(1, t, dtype=torch.long), torch.arange(t)[None] - 1,
                                         torch.randn(1, t, 2))


def test_logits_shape_mismatch():
    with pytest.raises(ValueError, match=r"logits.size\(1\) must be 2"):
        triton_verify.tree_verify_greedy(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]),
                                         torch.randn(1, 3, 4))


def test_uniforms_shape():
    with pytest.raises(ValueError, match=r"uniforms must be float32 \[B, T \+ 1\]"):
        triton_verify.tree_verify_sample(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]),
                                         torch.randn(1, 2, 4), torch.rand(1, 2), 1.0)


def test_token_out_of_vocabulary():
    with pytest.raises(ValueError, match=r"tokens must be in \[0, V = 4\)"):
        triton_verify.tree_verify_greedy(torch.tensor([[0, 9]]), torch.tensor([[-1, 0]]), torch.randn(1, 2, 4))


def test_bad_sampling_parameters():
    args = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]), torch.randn(1, 2, 4), torch.rand(1, 3))
    with pytest.raises(ValueError, match="top_p must be in"):
        triton_verify.tree_verify_sample(*args, 1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        triton_verify.tree_verify_sample(*args, -1.0)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        triton_verify.tree_verify_sample(*args, 1.0, top_k=-1)


def test_draft_probs_shape():
    with pytest.raises(ValueError, match="draft_probs must have the shape of logits"):
        triton_verify.tree_verify_sample(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[-1, 0]]),
                                         torch.randn(1, 2, 4), torch.rand(1, 3), 1.0, draft_probs=torch.rand(1, 2, 3))
