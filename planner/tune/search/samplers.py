"""The sampler a study draws its points with: ``--sampler`` (TPE or random), one seed per trial, bounded by the gate.

The layers, outermost first: :class:`planner.tune.search.bounded.GateBoundedSampler` (γ within 1..G, whole-point
draws the gate refuses or a finished trial trained drawn again), :class:`planner.tune.search.seeding.PerTrialSeed`
(no two trials share a random state), then Optuna's sampler.
"""

from __future__ import annotations

import math
import warnings

import optuna

from planner.tune.search.bounded import GateBoundedSampler, admissible, largest_fitting_active_layers
from planner.tune.search.seeding import PerTrialSeed

TPE_STARTUP_TRIALS = 5  # random points before TPE models the space (studies/bench_search.py: 3 and 5 tie, 10 is worse)
# The share of finished trials TPE models as the good group l(x) (Optuna's ``gamma`` argument, not the project's γ).
# Optuna's 10% builds l(x) from the single best trial until trial 11, so at `planner tune`'s budgets (24 trials) TPE
# only searches around its incumbent; 15% keeps two from trial 7 on. studies/bench_search.py, 100 searches on three
# landscapes (the raced grid's means, seed 0's runs, seed 1's runs): median trials to within 1% of the best
# 10%: 13, 23, 13; 15%: 10.5, 17.5, 11; 20%: 11, 19.5, 12; 25%: 11, 22, 14.5.
TPE_GOOD_SHARE = 0.15
TPE_GOOD_MAX = 25  # Optuna's cap on the good group


def good_trials(n: int, share: float = TPE_GOOD_SHARE) -> int:
    """How many of ``n`` finished trials TPE models as good: ⌈share · n⌉, at most TPE_GOOD_MAX."""
    return min(math.ceil(share * n), TPE_GOOD_MAX)


def make_sampler(name: str, seed: int, **tpe):
    """The Optuna sampler ``--sampler`` names: multivariate TPE (joint over the parameters, good group
    :func:`good_trials`) or random. ``tpe``: TPESampler arguments that replace these (benchmarks of other options)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # Optuna 4.9 deprecated `gamma`, to go in 6.0: pyproject holds optuna < 6
        warnings.filterwarnings("ignore", message="`gamma` has been deprecated", category=FutureWarning)
        return optuna.samplers.TPESampler(
            **{"seed": seed, "n_startup_trials": TPE_STARTUP_TRIALS, "multivariate": True, "gamma": good_trials, **tpe}
        )


def study_sampler(name: str, seed: int, space, gate, sampler=None):
    """``make_sampler(name, seed)``, or the Optuna ``sampler`` given (benchmarks of other options), wrapped as a study
    uses it (see the module's docstring)."""
    inner = sampler if sampler is not None else make_sampler(name, seed)
    return GateBoundedSampler(
        PerTrialSeed(inner, seed), max(1, largest_fitting_active_layers(space, gate)), admissible(space, gate), seed
    )
