"""Sampling at the edges of its settings, by every method of methods.METHODS: temperatures near 0, top_k = 1 and
top_p near 0 keep only the most likely token, so they decode plain greedy tokens; settings out of range are a
ValueError before any token (top_p = 0 too: it would keep no token; top_k = 1 is how to keep the most likely
one); a target that allows one token decodes only it, and one that allows a few is still sampled losslessly."""
import math

import pytest
import torch
from helpers import chi_square, chi_square_critical, exact_marginals, pooled
from specdec_kernels.decoding import MIN_TEMPERATURE, generate, speculative_generate
from specdec_kernels.drafters import DraftShape, EagleDrafter
from specdec_kernels.hierarchical import hierarchical_generate
from specdec_kernels.methods import METHODS
from specdec_kernels.models import layer_subset
from specdec_kernels.quant import RowwiseLinear, dense_weight

PROMPT = [1, 5, 7]
KEEP_THE_MOST_LIKELY = [{"temperature": 1e-6}, {"temperature": MIN_TEMPERATURE}, {"temperature": 1.0, "top_k": 1},
                        {"temperature": 1.0, "top_p": 1e-9}]
OUT_OF_RANGE = [
    ({"temperature": -1.0}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"),
    ({"temperature": 1e-45}, "temperature"),  # logits / temperature overflowed: NaN probabilities, a garbage token
    ({"top_p": 0.0}, "top_p"), ({"top_p": -0.5}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": math.nan}, "top_p"),
    ({"top_k": -1}, "top_k"),
]


@pytest.mark.parametrize("method", list(METHODS))
def test_settings_that_keep_only_the_most_likely_token_decode_greedily(tiny, make_decoder, method):
    decoder = make_decoder(tiny)
    for seed in range(2):
        prompt = torch.randint(0, 40, (5,), generator=torch.Generator().manual_seed(seed)).tolist()
        greedy = generate(tiny, prompt, 40).tokens
        for options in KEEP_THE_MOST_LIKELY:
            assert decoder.generate(method, prompt, 40, seed=seed, **options).tokens == greedy, options


@pytest.mark.parametrize("method", list(METHODS))
def test_settings_out_of_range_are_a_clear_error_before_any_token(tiny, make_decoder, method):
    decoder = make_decoder(tiny)
    for options, named in OUT_OF_RANGE:
        streamed = []
        with pytest.raises(ValueError, match=f"{named} must be"):
            decoder.generate(method, PROMPT, 8, **{"temperature": 1.0, **options}, stream=streamed.append)
        assert streamed == [], options


def allowing(model, token_ids: torch.Tensor):
    """`model` (the same weights, a cache of its own) with logits -inf but at token_ids: an output-head bias."""
    restricted = layer_subset(model, range(model.config.n_layers))
    bias = torch.full((model.config.vocab_size,), -math.inf)
    bias[token_ids] = 0.0
    restricted.lm_head = RowwiseLinear(dense_weight(model.lm_head), bias)
    return restricted


@pytest.mark.parametrize("method", list(METHODS))
def test_a_target_that_allows_one_token_decodes_only_it(tiny, make_decoder, method):
    """The target's logits are -inf but for token 17; the drafts propose others."""
    decoder = make_decoder(allowing(tiny, torch.tensor([17])))
    for options in ({}, {"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.5}, {"temperature": 2.0, "top_k": 3}):
        assert decoder.generate(method, PROMPT, 12, seed=0, **options).tokens == [17] * 12, options


def sampled_counts(decode, trials: int):
    """Counts [3, V] of the first three tokens over `trials` seeds, and the draft tokens accepted in all."""
    counts, accepted = torch.zeros(3, 40, dtype=torch.float64), 0
    for seed in range(trials):
        out = decode(seed)
        for position, token in enumerate(out.tokens):
            counts[position, token] += 1
        accepted += sum(a - 1 for a in out.accepted_per_step)
    return counts, accepted


@pytest.mark.slow
def test_a_target_that_allows_few_tokens_is_sampled_losslessly(tiny, trained_head, related, threads):
    """Half the vocabulary allowed: the drafts (EAGLE trees; HierSpec's sequences from an intermediate that allows
    every token) often propose a token the target gives probability 0. Such a token never comes out, and the
    first three tokens follow the target's distribution (chi-square over 1,000 runs of each)."""
    threads(1)  # the tiny model's forwards are too small to share: one thread is several times faster
    target = allowing(tiny, torch.arange(0, 40, 2))
    drafter = EagleDrafter(target, trained_head)
    exact = exact_marginals(target, PROMPT)
    runs = {
        "eagle2": lambda seed: speculative_generate(target, drafter, PROMPT, 3, temperature=1.0, seed=seed,
                                                    shape=DraftShape(8, depth=3, top_k=2)),
        "hier": lambda seed: hierarchical_generate(target, related, drafter, PROMPT, 3, temperature=1.0, seed=seed,
                                                   shape=DraftShape(4, depth=2, top_k=2), min_draft=2),
    }
    for name, decode in runs.items():
        counts, accepted = sampled_counts(decode, 1000)
        assert accepted > 200, f"{name}: only {accepted} draft tokens accepted: verification barely ran"
        for position in range(3):
            allowed = exact[position] > 0
            assert counts[position, ~allowed].sum() == 0, (name, position)
            c, p = pooled(counts[position, allowed], exact[position][allowed])
            assert chi_square(c, p) < chi_square_critical(len(c) - 1), (name, position)
