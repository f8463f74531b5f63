"""Method auto on a tiny target: sampling stays lossless while the planner switches shapes between and within
runs, and a drafter that never helps is paused, so the steps are plain ones."""
import pytest
import torch
from helpers import PLANNER_TEST_COSTS, chi_square, chi_square_critical, emitted_counts, exact_marginals, pooled
from specdec_kernels.decoding import generate, speculative_generate
from specdec_kernels.drafters import EagleDrafter, EagleHead
from specdec_kernels.planner import Planner


@pytest.mark.slow
def test_auto_sampling_is_lossless(tiny, trained_head):
    """First three tokens over 2,000 runs follow the target's distribution (chi-square) while the planner changes
    the tree's size from step to step; samples at another temperature are rejected by the same test."""
    drafter, prompt = EagleDrafter(tiny, trained_head), [1, 5, 7]
    exact = exact_marginals(tiny, prompt)
    counts, results = emitted_counts(tiny, drafter, prompt, 2000, 1.0, planner=Planner(PLANNER_TEST_COSTS))
    sizes = {size for out in results for size in out.draft_sizes}
    assert len(sizes) >= 3, f"the planner verified only trees of {sizes} nodes: no shape switching to test"
    assert sum(a - 1 for out in results for a in out.accepted_per_step) > 600
    for position in range(3):
        c, p = pooled(counts[position], exact[position])
        assert chi_square(c, p) < chi_square_critical(len(c) - 1), f"token {position + 1}"
    biased, _ = emitted_counts(tiny, drafter, prompt, 1000, 0.7, planner=Planner(PLANNER_TEST_COSTS))
    c, p = pooled(biased[2], exact[2])
    assert chi_square(c, p) > chi_square_critical(len(c) - 1)


class CountingDrafter(EagleDrafter):
    def __init__(self, *args):
        super().__init__(*args)
        self.extends = 0

    def extend(self, tokens, features):
        self.extends += 1
        return super().extend(tokens, features)


def test_a_useless_drafter_is_paused(tiny):
    """A random head's drafts are never accepted: the planner stops asking it, so nearly every step is a plain
    one (the root alone, no drafter call), and the output is plain decoding's."""
    torch.manual_seed(0)
    drafter = CountingDrafter(tiny, EagleHead.from_target(tiny, torch.arange(tiny.config.vocab_size)).eval())
    prompt = [3, 1, 4, 1, 5]
    out = speculative_generate(tiny, drafter, prompt, 100, planner=Planner(PLANNER_TEST_COSTS))
    assert out.tokens == generate(tiny, prompt, 100).tokens
    assert out.mean_accepted < 1.05
    # the first steps teach the curve, then pauses of 8, 16, 32 ... steps with 4-step probes between them
    assert drafter.extends < 0.3 * out.steps, f"the drafter was asked on {drafter.extends} of {out.steps} steps"


def test_a_useful_drafter_keeps_drafting(tiny, trained_head):
    """Negative control for the pause: the trained head's drafts are accepted, so the planner keeps asking it."""
    drafter = CountingDrafter(tiny, trained_head)
    prompt = [3, 1, 4, 1, 5]
    out = speculative_generate(tiny, drafter, prompt, 100, planner=Planner(PLANNER_TEST_COSTS))
    assert out.tokens == generate(tiny, prompt, 100).tokens
    assert out.mean_accepted > 1.5 and drafter.extends == out.steps
