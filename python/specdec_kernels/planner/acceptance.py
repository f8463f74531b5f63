"""How likely a draft node is to be accepted, from the drafter's own path probability, calibrated on what the
target actually accepted.

A node's value is the drafter's cumulative log-probability of its path (EAGLE-2's tree value). The accepted
tokens of a step are the nodes of the accepted path, so E[tokens per step] = 1 + sum over draft nodes of
P(node's path accepted): the planner needs only each node's acceptance probability. The drafter's own
probability over- or under-states it (a head is not calibrated, and sampling accepts differently from greedy),
so counts of (value bin, accepted) pairs map one to the other. The counts start from a prior (the shipped
curve measured on held-out conversations, or a flat guess) worth PRIOR_WEIGHT observations per bin and keep
learning from every verified step, so a drafter that stops predicting this text is noticed within a few steps.
"""
import math
from dataclasses import dataclass, field
from typing import List, Sequence

BINS = 20  # uniform bins of the path probability exp(value) in [0, 1]
PRIOR_WEIGHT = 8.0  # observations the prior counts for, per bin
DECAY = 0.995  # per update: recent steps count more (a text's predictability drifts)


def bin_of(value: float) -> int:
    return min(int(math.exp(value) * BINS), BINS - 1)


def monotone(rates: Sequence[float], weights: Sequence[float]) -> List[float]:
    """The non-decreasing sequence closest to `rates` in weighted least squares (pool adjacent violators):
    a likelier path is never less likely to be accepted."""
    blocks = []  # [mean, weight, count]
    for rate, weight in zip(rates, weights):
        blocks.append([rate, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2, n2), (m1, w1, n1) = blocks.pop(), blocks.pop()
            total = w1 + w2
            blocks.append([(m1 * w1 + m2 * w2) / total if total else (m1 + m2) / 2, total, n1 + n2])
    return [mean for mean, _, count in blocks for _ in range(count)]


@dataclass
class AcceptanceCurve:
    """P(a draft node's path is accepted | its value), per bin of exp(value); learns from verified steps."""

    prior: List[float] = field(default_factory=lambda: [(i + 0.5) / BINS for i in range(BINS)])
    accepted: List[float] = field(default_factory=lambda: [0.0] * BINS)
    seen: List[float] = field(default_factory=lambda: [0.0] * BINS)

    def __post_init__(self):
        if len(self.prior) != BINS or not all(0.0 <= p <= 1.0 for p in self.prior):
            raise ValueError(f"an acceptance prior needs {BINS} probabilities in [0, 1], got {self.prior}")
        self._refresh()

    def _refresh(self):
        weights = [PRIOR_WEIGHT + s for s in self.seen]
        rates = [(PRIOR_WEIGHT * p + a) / w for p, a, w in zip(self.prior, self.accepted, weights)]
        self.rates = monotone(rates, weights)

    def __call__(self, value: float) -> float:
        return self.rates[bin_of(value)]

    def update(self, values: Sequence[float], accepted: Sequence[bool]) -> None:
        """One verified step: each draft node's value and whether its path was accepted."""
        self.accepted = [a * DECAY for a in self.accepted]
        self.seen = [s * DECAY for s in self.seen]
        for value, ok in zip(values, accepted):
            b = bin_of(value)
            self.seen[b] += 1.0
            self.accepted[b] += float(ok)
        self._refresh()

    def observed(self) -> List[dict]:
        """The curve as a table: bin range, observations (decayed), the calibrated probability."""
        return [{"p_low": i / BINS, "p_high": (i + 1) / BINS, "seen": s, "accepted": a, "calibrated": r}
                for i, (s, a, r) in enumerate(zip(self.seen, self.accepted, self.rates))]
