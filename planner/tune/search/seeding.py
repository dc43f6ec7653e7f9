"""One sampler seed per trial, so parallel workers and resumes never draw the same point.

Seeding every process's sampler with ``--seed`` makes two workers (or a run and its resume) draw
the same random sequence: on the default study one searched trial in five repeated another.
:class:`PerTrialSeed` reseeds the sampler before each trial from ``(--seed, trial number)``.
Trial numbers are unique within a study, so no two trials share a seed, whichever process runs
them; one process alone still draws exactly the same points for the same ``--seed``. The data
split and the model initialisation stay fixed by ``--seed`` (they never read this seed).
"""

from __future__ import annotations

import hashlib

from optuna.samplers import BaseSampler


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study run with ``--seed seed``."""
    digest = hashlib.sha256(f"planner-sampler:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _random_states(sampler):
    """The numpy RandomStates a built-in sampler draws from (TPE keeps a second one for its startup trials)."""
    for obj in (sampler, getattr(sampler, "_random_sampler", None)):
        rng = getattr(getattr(obj, "_rng", None), "rng", None)
        if rng is not None and hasattr(rng, "seed"):
            yield rng


class PerTrialSeed(BaseSampler):
    """Wraps a sampler; before each trial its random state is reset to :func:`trial_seed`.

    ``on_trial(trial_id)`` is told of every trial as soon as it exists (the worker's bookkeeping).
    """

    def __init__(self, sampler: BaseSampler, seed: int, on_trial=None):
        self.sampler = sampler
        self.seed = seed
        self.on_trial = on_trial

    def before_trial(self, study, trial) -> None:
        if self.on_trial is not None:
            self.on_trial(trial._trial_id)
        states = list(_random_states(self.sampler))
        if states:
            for rng in states:
                rng.seed(trial_seed(self.seed, trial.number))
        else:  # a sampler whose state we cannot reach: fresh entropy still keeps workers apart
            self.sampler.reseed_rng()
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
