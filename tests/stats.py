"""Goodness-of-fit helpers for the losslessness tests."""
import math

import torch


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_critical(dof: int) -> float:
    """Upper 0.1% point of chi-square (Wilson-Hilferty), so that a correct sampler fails 1 in 1000 seeds."""
    z = 3.09
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def pooled(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0):
    """(counts, probs) with the cells expected fewer than min_expected times merged into one (the
    chi-square approximation needs a few expected counts per cell)."""
    small = probs * counts.sum() < min_expected
    if not small.any():
        return counts, probs
    return (torch.cat([counts[~small], counts[small].sum()[None]]), torch.cat([probs[~small], probs[small].sum()[None]]))
