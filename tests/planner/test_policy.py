"""The planner's choices on synthetic cost curves and acceptance estimates, and its acceptance curve."""
import math
from itertools import accumulate, product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels.planner import (AcceptanceCurve, Planner, StepCosts, best_chain_lengths, best_size,
                                     worth_another_level)
from specdec_kernels.planner.acceptance import BINS, monotone
from specdec_kernels.planner.step_planner import BACKOFF, PLAIN_STREAK

FLAT = StepCosts(forward_ms=(6.0,) * 16, extend_ms=0.5, level_ms=0.2)            # a GPU-like curve
STEEP = StepCosts(forward_ms=tuple(6.0 * t for t in range(1, 17)), extend_ms=0.5, level_ms=0.8)  # compute-bound
PLAIN_RATE = 1 / 6.5  # tokens per ms of plain decoding under both


def test_a_flat_cost_curve_verifies_every_likely_node():
    nodes, _ = best_size([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], levels=4, costs=FLAT, rate=PLAIN_RATE)
    assert nodes == 7


def test_a_steep_cost_curve_verifies_the_root_alone():
    nodes, _ = best_size([0.9, 0.8, 0.7], levels=2, costs=STEEP, rate=PLAIN_RATE)
    assert nodes == 1


def test_a_node_pays_exactly_when_its_acceptance_beats_its_cost_at_the_current_rate():
    costs = StepCosts(forward_ms=(6.0, 9.0), extend_ms=0.5, level_ms=0.1)
    # one more node: +3 ms; at 1/6.5 tokens per ms it pays when its acceptance exceeds 3 / 6.5
    assert best_size([0.47], 1, costs, PLAIN_RATE)[0] == 2
    assert best_size([0.45], 1, costs, PLAIN_RATE)[0] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=30), st.integers(1, 8), st.floats(0.01, 1.0))
def test_the_chosen_size_maximises_the_objective(acceptance, levels, rate):
    acceptance = sorted(acceptance, reverse=True)
    nodes, score = best_size(acceptance, levels, STEEP, rate)
    for n in range(1, min(len(acceptance), STEEP.max_nodes - 1) + 2):
        other = 1 + sum(acceptance[: n - 1]) - rate * STEEP.step_ms(n, levels)
        assert other <= score + 1e-9
    assert 1 <= nodes <= min(len(acceptance) + 1, STEEP.max_nodes)


def test_another_level_pays_on_a_flat_curve_and_not_on_a_steep_one():
    acceptance, frontier = [0.9, 0.3, 0.1, 0.05], [0.9, 0.3]
    assert worth_another_level(acceptance, frontier, 0.7, 1, FLAT, PLAIN_RATE)
    assert not worth_another_level(acceptance, frontier, 0.7, 1, STEEP, PLAIN_RATE)


def test_costs_must_be_positive_and_finite():
    for bad in [dict(forward_ms=()), dict(forward_ms=(1.0, -1.0)), dict(forward_ms=(math.nan,)),
                dict(forward_ms=(1.0,), extend_ms=math.inf)]:
        with pytest.raises(ValueError, match="positive and finite"):
            StepCosts(**{"forward_ms": (1.0,), "extend_ms": 0.5, "level_ms": 0.2, **bad})


# ---------------------------------------------------------------- the acceptance curve
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.1, 10)), min_size=1, max_size=20))
def test_pooling_gives_a_non_decreasing_curve_with_the_same_weighted_mean(points):
    rates, weights = zip(*points)
    pooled = monotone(rates, weights)
    assert all(a <= b + 1e-12 for a, b in zip(pooled, pooled[1:]))
    assert sum(p * w for p, w in zip(pooled, weights)) == pytest.approx(sum(r * w for r, w in points))


def test_the_curve_learns_that_likely_nodes_are_rejected():
    curve = AcceptanceCurve()
    likely = math.log(0.95)
    assert curve(likely) > 0.9  # the prior: a calibrated drafter
    for _ in range(200):
        curve.update([likely] * 4, [False] * 4)
    # monotone: no less likely node can be estimated above it, so the rejections pull the whole curve down
    assert curve(likely) < 0.2 and max(curve.rates) == curve(likely)


def test_a_prior_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="prior"):
        AcceptanceCurve(prior=[1.5] * BINS)


# ---------------------------------------------------------------- the planner over steps
def test_a_useless_drafter_is_paused_and_probed_with_a_growing_backoff():
    planner = Planner(STEEP)
    decided = []
    for _ in range(PLAIN_STREAK + BACKOFF[0] + PLAIN_STREAK + 2 * BACKOFF[0]):
        drafting = planner.drafting()
        decided.append(drafting)
        planner.observe([], [-1], [], emitted=1, nodes=1, drafted=drafting)  # root alone every step
    expected = ([True] * PLAIN_STREAK + [False] * BACKOFF[0] + [True] * PLAIN_STREAK + [False] * (2 * BACKOFF[0]))
    assert decided == expected


def test_an_accepted_draft_resets_the_backoff():
    planner = Planner(FLAT)
    planner.backoff = 64
    planner.observe([math.log(0.9)], [-1, 0], [True], emitted=2, nodes=2, drafted=True)
    assert planner.backoff == BACKOFF[0] and planner.drafting()


# ---------------------------------------------------------------- AdaEAGLE's lengths per predictor bin
def chain_rate(label_counts, lengths, costs):
    """Tokens per ms of chains of `lengths` (one per bin) over the table's positions."""
    tokens = sum(n * (1 + min(k, a)) for counts, k in zip(label_counts, lengths) for a, n in enumerate(counts))
    ms = sum(sum(counts) * costs.step_ms(k + 1, k) for counts, k in zip(label_counts, lengths))
    return tokens / ms


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.integers(0, 50), min_size=4, max_size=4), min_size=1, max_size=4),
       st.lists(st.floats(1.0, 3.0), min_size=3, max_size=3), st.floats(0.01, 2.0), st.floats(0.01, 2.0))
def test_the_chain_lengths_reach_the_best_rate_of_all_length_choices(label_counts, growth, extend_ms, level_ms):
    if sum(map(sum, label_counts)) == 0:
        return
    forward = tuple(accumulate([5.0, *growth]))  # c(1) .. c(4), rising
    costs = StepCosts(forward, extend_ms, level_ms)
    lengths = best_chain_lengths(label_counts, costs)
    assert len(lengths) == len(label_counts) and all(0 <= k <= 3 for k in lengths)
    best = max(chain_rate(label_counts, choice, costs) for choice in product(range(4), repeat=len(label_counts)))
    assert chain_rate(label_counts, lengths, costs) >= best * (1 - 1e-12)


def test_chain_lengths_follow_the_cost_curve():
    sure, unsure = [1, 1, 2, 96], [70, 20, 6, 4]  # labels 0..3 of a bin the predictor is sure of, and of one it is not
    # nodes cost nothing: only the unsure bin's third draft level (0.2 ms for 0.04 tokens) does not pay
    assert best_chain_lengths([unsure, sure], FLAT) == (2, 3)
    # a node costs a forward (6 ms, ~0.9 tokens at plain decoding's rate): one sure draft token still pays
    assert best_chain_lengths([unsure, sure], STEEP) == (0, 1)
    middle = StepCosts(forward_ms=(6.0, 6.6, 7.2, 7.8), extend_ms=0.5, level_ms=0.2)
    assert best_chain_lengths([unsure, sure], middle) == (1, 3)


def test_chain_lengths_need_positions():
    with pytest.raises(ValueError, match="no positions"):
        best_chain_lengths([[0, 0], [0, 0]], FLAT)
