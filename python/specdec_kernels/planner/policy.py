"""The planner's choice for one step, as pure functions of the draft's acceptance estimates and measured costs.

Decoding runs many steps, so what counts is the long-run rate: tokens over time summed over steps. A step
that emits E tokens in t ms raises the rate r exactly when E - r t > 0, so each choice maximises E - r t with
r the rate decoding reaches now (Dinkelbach's rule for ratio objectives). Growing the tree another level is
worth it when the best objective with the level's nodes (their acceptance guessed as `continuation` times
their parents') beats the best without them, the level's cost included.
"""
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence, Tuple


@dataclass(frozen=True)
class StepCosts:
    """Measured milliseconds of the parts of a speculative step (planner.costs measures them)."""

    forward_ms: Tuple[float, ...]  # the target's forward over T nodes, T = 1 .. len
    extend_ms: float               # the drafter commits the step's tokens and predicts the root's children
    level_ms: float                # the drafter grows its tree one level deeper

    def __post_init__(self):
        values = (*self.forward_ms, self.extend_ms, self.level_ms)
        if not self.forward_ms or not all(v > 0 and v < float("inf") for v in values):
            raise ValueError(f"step costs must be positive and finite, got {self}")

    @property
    def max_nodes(self) -> int:
        return len(self.forward_ms)

    def step_ms(self, nodes: int, levels: int) -> float:
        """A step verifying `nodes` (root included) of a tree grown `levels` deep (the root's children are level 1,
        which the drafter's extend already predicted)."""
        return self.extend_ms + max(levels - 1, 0) * self.level_ms + self.forward_ms[nodes - 1]


def best_size(acceptance: Sequence[float], levels: int, costs: StepCosts, rate: float) -> Tuple[int, float]:
    """acceptance: the candidates' acceptance probabilities, best first (EAGLE-2's rerank keeps a prefix: a
    connected subtree) -> (nodes to verify, root included; its objective E - rate * t)."""
    expected = accumulate(acceptance[: costs.max_nodes - 1], initial=1.0)  # E[tokens] of 1, 2, ... nodes
    scores = [e - rate * costs.step_ms(nodes, levels) for nodes, e in enumerate(expected, start=1)]
    best = max(range(len(scores)), key=scores.__getitem__)  # ties: the smaller tree
    return best + 1, scores[best]


def worth_another_level(acceptance: Sequence[float], frontier: Sequence[float], continuation: float, levels: int,
                        costs: StepCosts, rate: float) -> bool:
    """acceptance: the candidates' probabilities so far; frontier: those of the nodes the next level expands,
    each of which gets a child whose acceptance is guessed at continuation x its own."""
    _, now = best_size(sorted(acceptance, reverse=True), levels, costs, rate)
    guessed = sorted([*acceptance, *(continuation * a for a in frontier)], reverse=True)
    _, deeper = best_size(guessed, levels + 1, costs, rate)
    return deeper > now


def best_chain_lengths(label_counts: Sequence[Sequence[int]], costs: StepCosts) -> Tuple[int, ...]:
    """AdaEAGLE's lengths for this machine. label_counts[b][a]: held-out positions in bin b of the length predictor's
    output whose greedy head chain had its first a tokens accepted (a = 0 .. k_max, the last also "k_max or
    more") -> per bin the chain length k in 0 .. k_max (0: a plain step) that maximises the long-run rate over all
    positions, sum E / sum t, with E = 1 + min(k, a) tokens and t = costs.step_ms(k + 1, k). Dinkelbach's rule: at
    rate r each bin takes its best E - r t, r becomes the rate those choices reach, until the choices repeat (the
    rate rises every round, so they do)."""
    if not label_counts or sum(map(sum, label_counts)) <= 0:
        raise ValueError("the length table holds no positions")
    k_max = min(len(label_counts[0]) - 1, costs.max_nodes - 1)
    tokens = [[sum(n * (1 + min(k, a)) for a, n in enumerate(counts)) for k in range(k_max + 1)]
              for counts in label_counts]
    ms = [[sum(counts) * costs.step_ms(k + 1, k) for k in range(k_max + 1)] for counts in label_counts]
    bins, rate, chosen = range(len(label_counts)), 0.0, None
    while True:
        best = tuple(max(range(k_max + 1), key=lambda k: (tokens[b][k] - rate * ms[b][k], -k)) for b in bins)
        if best == chosen:
            return chosen
        chosen = best
        rate = sum(tokens[b][k] for b, k in zip(bins, chosen)) / sum(ms[b][k] for b, k in zip(bins, chosen))
