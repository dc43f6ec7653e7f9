"""LISA (Pan et al. 2024, arXiv 2403.17919): γ layers uniformly at random, without replacement."""

from __future__ import annotations

from planner.sampling.scorers.base import Scorer, register_scorer


@register_scorer("uniform")
class UniformScorer(Scorer):
    """Every candidate layer is equally likely: p_l = 1 / (L - min_depth)."""

    draw = "uniform"

    def __init__(self) -> None:
        pass
