"""The gate bounds the search: the sampler proposes no point the gate would refuse to train.

Before the study, the gate finds G, the largest γ that fits the budget at its cheapest
(embeddings and head frozen, the best ``min_depth`` and checkpointing choice, the smallest
batch and LoRA rank): every point with γ > G is over budget whatever else it chooses. The
sampler then draws γ from 1..G while trials keep recording γ on 1..L (so baselines such as full
fine-tuning, γ = L, stay in the same study, gated). Measured on Llama-3-8B at 24 GB (G = 3 of
32), 24 trials with a tiny proxy, seeds 0-3: 22, 20, 20 and 17 trials gated without the bound,
13, 7, 11 and 11 with it.

Within 1..G a point can still be over budget (embeddings or head trainable, no checkpointing): a
multivariate TPE draw (the whole point at once) that the gate refuses, or that a finished trial
already trained (its proxy run would only be reused), is drawn again, at most :data:`REDRAWS`
times; TPE returns the best of its candidates, so where it keeps returning a refused point a
uniform draw over the space (Optuna's random sampler, seeded by trial) takes its place (again up
to :data:`REDRAWS` times; if none is admissible the last TPE draw stands). The search thus spends
its trials on points that train and that it has not measured. Random start-up draws, one
parameter at a time, are not screened.
"""

from __future__ import annotations

from dataclasses import replace

from optuna.distributions import IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import TrialState

from planner.tune.study import record
from planner.tune.search.forms import fits as fits_in_a_form
from planner.tune.search.seeding import trial_seed

ACTIVE_LAYERS = "active_layers"
REDRAWS = 32  # draws of one trial's point before the last is kept whatever it is


class GateBoundedSampler(BaseSampler):
    """Wraps a sampler; ``active_layers`` is drawn from ``1..max_active_layers`` (relative and independent sampling alike), and a
    whole-point (relative) draw that ``admissible(study)(params)`` rejects is drawn again."""

    def __init__(self, sampler: BaseSampler, max_active_layers: int, admissible=None, seed: int = 0):
        self.sampler = sampler
        self.max_active_layers = int(max_active_layers)
        self.admissible = admissible
        self.seed = seed

    def _narrow(self, distribution):
        if isinstance(distribution, IntDistribution) and distribution.high > self.max_active_layers >= distribution.low:
            return IntDistribution(
                distribution.low, self.max_active_layers, log=distribution.log, step=distribution.step
            )
        return distribution

    def before_trial(self, study, trial) -> None:
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        space = dict(self.sampler.infer_relative_search_space(study, trial))
        if ACTIVE_LAYERS in space:
            space[ACTIVE_LAYERS] = self._narrow(space[ACTIVE_LAYERS])
        return space

    def sample_relative(self, study, trial, search_space):
        params = self.sampler.sample_relative(study, trial, search_space)
        if not params or self.admissible is None:
            return params
        accept = self.admissible(study)
        for _ in range(REDRAWS - 1):  # the sampler's random state moves on with each draw
            if accept(params):
                return params
            params = self.sampler.sample_relative(study, trial, search_space)
        if accept(params):
            return params
        uniform = RandomSampler(seed=trial_seed(self.seed, trial.number))
        for _ in range(REDRAWS):
            drawn = {name: uniform.sample_independent(study, trial, name, dist) for name, dist in search_space.items()}
            if accept(drawn):
                return drawn
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        if param_name == ACTIVE_LAYERS:
            param_distribution = self._narrow(param_distribution)
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def largest_fitting_active_layers(space, gate) -> int:
    """G: the most active layers any point of ``space`` fits with (0 when none fits)."""
    fits = fits_in_a_form(space, gate)
    ranks = sorted({r for r in space.lora_ranks if r}) if space.lora_ranks else []
    best = max((p.active_layers for p in space.frontier(fits)), default=0)
    if ranks and best < space.num_layers:  # adapters cost less than layer weights: their frontier may reach higher
        stored = [q for q in space.quantize_choices if q]  # quantized base weights cost less again
        levers = (("quantize", stored[0]),) if stored else ()
        cheap = lambda p: fits(replace(p, lora_rank=ranks[0], levers=levers))  # noqa: E731
        best = max([best] + [p.active_layers for p in space.frontier(cheap)])
    return best


# whole points one draw may stand for (its missing conditional choices), at most, before it is let through
MAX_COMPLETIONS = 16


class _Missing(KeyError):
    """A parameter the draw left out: ``choices`` when it is categorical (the draw stands for each), else None."""

    def __init__(self, name: str, choices: list | None):
        super().__init__(name)
        self.name, self.choices = name, choices


class _Drawn:
    """Answers a space's ``suggest_*`` calls from a drawn ``params`` dict; a parameter left out of the draw
    (Optuna leaves one-choice parameters out) takes its only choice. :class:`_Missing`: the draw is not a whole
    point."""

    def __init__(self, params: dict):
        self.params = params

    def _get(self, name, only, categorical: bool = False):
        if name in self.params:
            return self.params[name]
        if len(only) == 1:
            return only[0]
        raise _Missing(name, list(only) if categorical else None)

    def suggest_int(self, name, low, high, **_):
        return self._get(name, [low] if low == high else [low, high])

    def suggest_float(self, name, low, high, **_):
        return self._get(name, [low] if low == high else [low, high])

    def suggest_categorical(self, name, choices):
        return self._get(name, list(choices), categorical=True)


def completions(space, params: dict) -> list | None:
    """The whole points a draw stands for: itself, or, where it leaves out a conditional categorical parameter
    (``quantize`` is asked only for some scorers, so whole-point draws over the parameters every trial shares
    lack it), one point per choice, which the trial's own draw then picks from. None: a non-categorical
    parameter is missing, or more than :data:`MAX_COMPLETIONS` points (the draw is let through)."""
    out, todo = [], [dict(params)]
    while todo:
        p = todo.pop()
        try:
            out.append(space.suggest(_Drawn(p)))
        except _Missing as missing:
            if missing.choices is None or len(out) + len(todo) + len(missing.choices) > MAX_COMPLETIONS:
                return None
            todo += [{**p, missing.name: c} for c in missing.choices]
    return out


def admissible(space, gate):
    """``admissible(study)`` -> ``accept(params)``: the drawn point fits the budget and no finished trial of ``study``
    trained it already; a draw missing a conditional categorical parameter passes where one of its choices does
    (:func:`completions`); any other draw that is not a whole point is let through (the objective gates and reuses
    as before)."""
    fits = fits_in_a_form(space, gate)

    def for_study(study):
        done = {
            space.from_params(t.params)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if "active_layers" in t.params and not record.read(t).gated
        }

        def accept(params: dict) -> bool:
            points = completions(space, params)
            if points is None:
                return True
            # some choice of the parameters the draw leaves to the trial trains a new point within the budget
            return any(point not in done and fits(point) for point in points)

        return accept

    return for_study
