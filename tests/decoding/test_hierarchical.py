"""HierSpec hierarchical drafts (hierarchical.py): lossless greedy and sampling, caches that keep only what the
target accepted, and clear errors on bad input."""
import pytest
import torch
from helpers import chi_square, chi_square_critical, exact_marginals, pooled, write_tiny_gguf
from specdec_kernels import hierarchical
from specdec_kernels.decoding import generate
from specdec_kernels.drafters import DraftShape, EagleDrafter
from specdec_kernels.hierarchical import hierarchical_generate
from specdec_kernels.models import layer_subset, load_gguf


def random_prompt(seed, length=5):
    return torch.randint(0, 40, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("min_draft", [1, 3, 6, 9])
@pytest.mark.parametrize("shape", [DraftShape(4, depth=2, top_k=2), DraftShape(8, depth=4, top_k=2),
                                   DraftShape.chain(1)])
def test_greedy_equals_plain_greedy(tiny, trained_head, related, shape, min_draft):
    drafter = EagleDrafter(tiny, trained_head)
    kept = []
    for seed in range(5):
        prompt = random_prompt(seed)
        plain = generate(tiny, prompt, 40, stop_tokens=[0])
        hier = hierarchical_generate(tiny, related, drafter, prompt, 40, stop_tokens=[0], shape=shape,
                                     min_draft=min_draft)
        assert hier.tokens == plain.tokens, f"prompt seed {seed}"
        assert all(length >= min(min_draft, 1) for length in hier.draft_lengths)
        assert len(hier.intermediate_forwards) == hier.steps
        kept += [a - 1 for a, length in zip(hier.accepted_per_step, hier.draft_lengths)]
    assert 0 in kept and max(kept) >= min(min_draft, 3), "the target should reject some drafts and keep others"


def test_identical_intermediate_is_always_accepted(tiny, trained_head):
    """An intermediate with the target's own layers proposes the target's greedy tokens: every sequence is kept."""
    drafter = EagleDrafter(tiny, trained_head)
    hier = hierarchical_generate(tiny, layer_subset(tiny, [0]), drafter, random_prompt(1), 30, min_draft=6)
    assert all(a == length + 1 for a, length in zip(hier.accepted_per_step[:-1], hier.draft_lengths))
    assert min(hier.draft_lengths[:-1]) >= 6


def committed_kv_matches_a_fresh_prefill(target, intermediate, prompt, tokens):
    """The intermediate holds the target's tokens (the last one may lag: it goes with the next tree), and their
    K/V equal those of a fresh prefill of the committed sequence (compared on what was emitted: the run may end
    inside its last accepted path)."""
    n, held = int(target.cache_lens[0]), int(intermediate.cache_lens[0])
    assert held in (n - 1, n), (held, n)
    sequence = (prompt + tokens)[:held]
    held_k, held_v = intermediate.k_cache[:, 0, : len(sequence)].clone(), intermediate.v_cache[:, 0, : len(sequence)].clone()
    intermediate.setup_cache(1, target.max_seq_len)
    intermediate(torch.tensor([sequence]))
    return (torch.allclose(held_k, intermediate.k_cache[:, 0, : len(sequence)], atol=1e-5, rtol=1e-5)
            and torch.allclose(held_v, intermediate.v_cache[:, 0, : len(sequence)], atol=1e-5, rtol=1e-5))


@pytest.mark.parametrize("seed", range(4))
def test_intermediate_cache_keeps_only_accepted_tokens(tiny, trained_head, related, seed):
    drafter = EagleDrafter(tiny, trained_head)
    prompt = random_prompt(seed)
    for max_new_tokens in (7, 19, 33):
        out = hierarchical_generate(tiny, related, drafter, prompt, max_new_tokens, shape=DraftShape(8, 4, 2))
        assert committed_kv_matches_a_fresh_prefill(tiny, related, prompt, out.tokens), max_new_tokens


def test_a_stale_intermediate_cache_is_caught(tiny, trained_head, monkeypatch):
    """Negative control: an intermediate that, after the target kept a whole sequence, forgets that its last
    token lags (right length, one stale entry) still decodes the right tokens, since the target verifies them;
    only the cache check sees the bug, and it does."""
    def skip_the_feed(intermediate, length, last_kept):
        intermediate.cache_lens.fill_(length)

    drafter, intermediate = EagleDrafter(tiny, trained_head), layer_subset(tiny, [0])
    prompt = random_prompt(2)
    plain = generate(tiny, prompt, 33)
    monkeypatch.setattr(hierarchical, "_cut_intermediate", skip_the_feed)
    out = hierarchical_generate(tiny, intermediate, drafter, prompt, 33, shape=DraftShape(8, 4, 2))
    assert out.tokens == plain.tokens
    assert not committed_kv_matches_a_fresh_prefill(tiny, intermediate, prompt, out.tokens)


@pytest.mark.slow
def test_sampling_is_lossless(tiny, trained_head, related):
    """The first three tokens of sampled hierarchical decoding (both levels reject) follow the target's own
    distribution (chi-square over 2,000 runs); the same test rejects samples taken at another temperature."""
    drafter = EagleDrafter(tiny, trained_head)
    prompt = [1, 5, 7]
    exact = exact_marginals(tiny, prompt)

    def counts(trials, temperature):
        seen, kept = torch.zeros(3, 40, dtype=torch.float64), 0
        for seed in range(trials):
            out = hierarchical_generate(tiny, related, drafter, prompt, 3, temperature=temperature, seed=seed,
                                        shape=DraftShape(4, depth=2, top_k=2), min_draft=2)
            for i, token in enumerate(out.tokens):
                seen[i, token] += 1
            kept += sum(a - 1 for a in out.accepted_per_step)
        return seen, kept

    seen, kept = counts(2000, 1.0)
    assert kept > 600, f"only {kept} sequence tokens accepted: the test would not exercise verification"
    for position in range(3):
        c, p = pooled(seen[position], exact[position])
        assert chi_square(c, p) < chi_square_critical(len(c) - 1), f"token {position + 1}"
    biased, _ = counts(1000, 0.7)
    c, p = pooled(biased[2], exact[2])
    assert chi_square(c, p) > chi_square_critical(len(c) - 1)


def test_near_the_end_of_the_cache(tiny, trained_head, related):
    """A prompt that nearly fills the cache: the sequence draft shrinks to the room left, never past it."""
    drafter = EagleDrafter(tiny, trained_head)
    prompt = random_prompt(3, length=120)  # the cache holds 128
    plain = generate(tiny, prompt, 8)
    hier = hierarchical_generate(tiny, related, drafter, prompt, 8, min_draft=6)
    assert hier.tokens == plain.tokens
    assert all(120 + sum(hier.accepted_per_step[:i]) + 1 + length <= 128 for i, length in enumerate(hier.draft_lengths))


def test_bad_input_is_a_clear_error(tiny, trained_head, tmp_path):
    drafter = EagleDrafter(tiny, trained_head)
    with pytest.raises(ValueError, match="another model than the target"):
        hierarchical_generate(tiny, tiny, drafter, [1, 2], 4)
    for min_draft in (0, 255, -3):
        with pytest.raises(ValueError, match="min_draft must be in"):
            hierarchical_generate(tiny, layer_subset(tiny, [0]), drafter, [1, 2], 4, min_draft=min_draft)
    path = str(tmp_path / "other_vocabulary.gguf")
    write_tiny_gguf(path, vocab=48)
    with pytest.raises(ValueError, match="vocabulary has 48 tokens, the target's 40"):
        hierarchical_generate(tiny, load_gguf(path, max_seq_len=128), drafter, [1, 2], 4)
    for layers in ([], [tiny.config.n_layers], [0, 0]):
        with pytest.raises(ValueError, match="layers must be"):
            layer_subset(tiny, layers)


def test_vocabulary_subset_head(tiny):
    """The subset head's logits are the full head's on its tokens and -inf elsewhere."""
    ids = torch.tensor([3, 0, 17, 39, 8])
    cut = layer_subset(tiny, range(tiny.config.n_layers), token_ids=ids)
    tiny.setup_cache(1, 128)
    full, _ = tiny(torch.tensor([[1, 5, 7, 9]]))
    part, _ = cut(torch.tensor([[1, 5, 7, 9]]))
    torch.testing.assert_close(part[..., ids], full[..., ids], atol=1e-5, rtol=1e-5)
    others = torch.ones(40, dtype=torch.bool)
    others[ids] = False
    assert torch.isneginf(part[..., others]).all()
    for bad in (torch.tensor([1, 1]), torch.tensor([40]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match="distinct ids"):
            layer_subset(tiny, [0], token_ids=bad)
