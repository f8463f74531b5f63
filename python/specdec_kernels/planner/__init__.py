"""The cost-aware planner behind method `auto` (docs/design.md 4.9): measured step costs (costs), the drafter's
acceptance calibrated on what the target accepts (acceptance), the choice per step as pure functions (policy)
and the planner the decoding loop asks (step_planner)."""
from .acceptance import AcceptanceCurve
from .costs import step_costs
from .policy import StepCosts, best_chain_lengths, best_size, worth_another_level
from .step_planner import MAX_SHAPE, Planner

__all__ = ["AcceptanceCurve", "MAX_SHAPE", "Planner", "StepCosts", "best_chain_lengths", "best_size", "step_costs",
           "worth_another_level"]
