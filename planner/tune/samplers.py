"""The sampler a study draws its points with: ``--sampler`` (TPE or random), one seed per trial, bounded by the gate.

The layers, outermost first: :class:`planner.tune.bounded.GateBoundedSampler` (γ within 1..G, whole-point
draws the gate refuses or a finished trial trained drawn again), :class:`planner.tune.seeding.PerTrialSeed`
(no two trials share a random state), then Optuna's sampler.
"""

from __future__ import annotations

TPE_STARTUP_TRIALS = 5  # random points before TPE models the space (studies/bench_search.py: 3 and 5 tie, 10 is worse)


def make_sampler(name: str, seed: int):
    """The Optuna sampler ``--sampler`` names: multivariate TPE (joint over the parameters) or random."""
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, multivariate=True)


def study_sampler(name: str, seed: int, space, gate, sampler=None):
    """``make_sampler(name, seed)``, or the Optuna ``sampler`` given (benchmarks of other options), wrapped as a study
    uses it (see the module's docstring)."""
    from planner.tune.bounded import GateBoundedSampler, admissible, largest_fitting_gamma
    from planner.tune.seeding import PerTrialSeed

    inner = sampler if sampler is not None else make_sampler(name, seed)
    return GateBoundedSampler(PerTrialSeed(inner, seed), max(1, largest_fitting_gamma(space, gate)),
                              admissible(space, gate), seed)
