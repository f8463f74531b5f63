"""The `auto` method's planner: each step it grows the drafter's tree only while another level pays, verifies
the subtree that maximises expected tokens per second, and learns from what the target accepted
(docs/design.md 4.9).

A drafter that stops helping (a random head, text it cannot predict) costs its per-step commit and tree
levels for drafts expected to gain less than that. After PLAIN_STREAK such steps the planner stops asking the
drafter for a while (the decoding loop keeps its tokens and commits them in one batch later) and probes again
after a backoff that doubles while probes keep failing: decoding then runs at plain decoding's speed.
"""
from typing import List, Optional, Sequence

from specdec_kernels.drafters import DraftShape

from .acceptance import AcceptanceCurve
from .policy import StepCosts, best_size, worth_another_level

# The largest tree the planner may grow: EAGLE-2's top_k and a depth past which acceptance is negligible here.
MAX_SHAPE = DraftShape(total_tokens=16, depth=8, top_k=4)
PLAIN_STREAK = 4           # steps in a row whose draft did not pay for the drafter before it is paused
BACKOFF = (8, 256)         # plain steps before the first probe, and the most between probes
CONTINUATION_PRIOR = 0.6   # P(a node's best child is accepted | the node is), before any observation
RATE_MEMORY = 0.97         # the long-run rate is a moving average over ~1 / (1 - RATE_MEMORY) steps


class Planner:
    """Chooses the draft of every step from measured costs and a calibrated acceptance curve."""

    def __init__(self, costs: StepCosts, prior: Optional[Sequence[float]] = None, shape: DraftShape = MAX_SHAPE):
        """prior: the acceptance curve each sequence starts from (acceptance.BINS probabilities; None: the
        drafter's own probabilities)."""
        self.costs, self.shape, self.prior = costs, shape.within(costs.max_nodes), prior
        self.reset()

    def reset(self):
        """A new sequence starts from the same state, so a seeded run gives the same output every time: the
        curve at its prior, the rate at plain decoding's, the drafter asked."""
        self.curve = AcceptanceCurve() if self.prior is None else AcceptanceCurve(prior=list(self.prior))
        self.continuation = [CONTINUATION_PRIOR * 8, 8.0]  # (accepted children, accepted parents): a Beta prior
        self.tokens, self.ms = 1.0, self.costs.forward_ms[0] + self.costs.extend_ms  # tokens per ms, as a ratio
        self.plain_streak, self.paused, self.backoff = 0, 0, BACKOFF[0]
        self.levels, self.drafter_paid = 0, False  # of the tree being verified

    @property
    def rate(self) -> float:
        return self.tokens / self.ms

    # ------------------------------------------------------------ asked by the tree growth
    def keep_growing(self, values: Sequence[float], frontier: Sequence[float], levels: int) -> bool:
        acceptance = [self.curve(v) for v in values]
        continuation = self.continuation[0] / self.continuation[1]
        return worth_another_level(acceptance, [self.curve(v) for v in frontier], continuation, levels, self.costs,
                                   self.rate)

    def size(self, values: Sequence[float], levels: int) -> int:
        self.levels = levels
        acceptance = sorted((self.curve(v) for v in values), reverse=True)
        nodes, score = best_size(acceptance, levels, self.costs, self.rate)
        # the drafter paid for itself when its best draft beats a plain step, which skips the drafter's costs
        self.drafter_paid = score > 1.0 - self.rate * self.costs.forward_ms[0]
        return nodes

    # ------------------------------------------------------------ asked by the decoding loop
    def drafting(self) -> bool:
        """Whether this step asks the drafter (False: a plain step; the loop keeps the step's tokens for later)."""
        if self.paused:
            self.paused -= 1
            return False
        return True

    def observe(self, values: Sequence[float], parents: Sequence[int], accepted: Sequence[bool], emitted: int,
                nodes: int, drafted: bool) -> None:
        """One verified step: the drafter's nodes' values, parents and whether each was on the accepted path (node 0,
        the root, excluded from values/accepted but counted in parents), the tokens it emitted and the nodes it
        verified. The rate counts the step's modelled time, not the clock: choices then follow the costs alone,
        whatever else the machine runs at the moment."""
        nodes = min(nodes, self.costs.max_nodes)
        step_ms = self.costs.step_ms(nodes, self.levels) if drafted else self.costs.forward_ms[nodes - 1]
        self.tokens = RATE_MEMORY * self.tokens + emitted
        self.ms = RATE_MEMORY * self.ms + step_ms
        if values:
            self.curve.update(values, accepted)
            self._learn_continuation(parents, accepted)
        if drafted:
            self._judge_drafter(any(accepted))
        self.levels, self.drafter_paid = 0, False

    def _judge_drafter(self, accepted_any: bool) -> None:
        """Pause the drafter after PLAIN_STREAK steps in a row that did not pay for it; an accepted draft ends the
        backoff's growth."""
        self.plain_streak = 0 if self.drafter_paid else self.plain_streak + 1
        if self.plain_streak >= PLAIN_STREAK:
            self.paused, self.plain_streak = self.backoff, 0
            self.backoff = min(2 * self.backoff, BACKOFF[1])
        elif accepted_any:
            self.backoff = BACKOFF[0]

    def _learn_continuation(self, parents: Sequence[int], accepted: Sequence[bool]) -> None:
        """Count, over accepted nodes (and the root) that have children in the tree, how often one was accepted."""
        on_path = [True] + list(accepted)  # tree order: node 0 is the root
        has_children = set(parents[1:])
        for node in has_children:
            if on_path[node]:
                self.continuation[1] += 1
                self.continuation[0] += any(on_path[i] for i, p in enumerate(parents) if p == node)

    def statistics(self) -> List[dict]:
        return self.curve.observed()
