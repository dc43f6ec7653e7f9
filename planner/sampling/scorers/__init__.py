"""Layer scorers, one strategy per file, registered by name (see :mod:`.base`)."""

from planner.sampling.scorers.base import (
    SCORERS,
    Scorer,
    draw_without_replacement,
    get_scorer,
    register_scorer,
    scorer_options,
)
from planner.sampling.scorers import cyclic, fixed, gradnorm, ist, outlier, semantic, uniform  # noqa: F401  (registration)

__all__ = ["SCORERS", "Scorer", "draw_without_replacement", "get_scorer", "register_scorer", "scorer_options"]
