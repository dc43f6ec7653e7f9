"""One trial: choose a point, gate it on predicted memory, train the proxy, record everything.

The trial record (read by reports):
params: gamma, period, scorer, train_embeddings, train_head, lr, (lora_rank), (batch_size);
user_attrs: kind, predicted_peak_bytes, breakdown, fits, gated, reason, lowest_layer,
trainable_layers, metric, importance, train_seconds.
"""

from __future__ import annotations

import math
from time import perf_counter
from typing import Callable

from planner.tune.baselines import SEARCH, baseline_points
from planner.tune.gate import BudgetGate
from planner.tune.lifecycle import INTERRUPTED  # noqa: F401 - set by lifecycle.GuardedObjective on Ctrl-C/SIGTERM
from planner.tune.proxy import run_proxy
from planner.tune.space import SearchSpace


class Objective:
    """Callable for ``study.optimize``: returns the proxy metric (and the predicted peak in multi-objective mode)."""

    def __init__(self, workload, space: SearchSpace, gate: BudgetGate, *, steps: int, eval_every: int, seed: int = 0,
                 multi_objective: bool = False, proxy: Callable = run_proxy):
        self.workload = workload
        self.space = space
        self.gate = gate
        self.steps = steps
        self.eval_every = eval_every
        self.seed = seed
        self.multi_objective = multi_objective
        self.proxy = proxy
        self._baselines = baseline_points(space)

    def __call__(self, trial):
        import optuna

        kind = trial.user_attrs.get("kind")
        if kind is None:
            kind = SEARCH
            trial.set_user_attr("kind", kind)
        if kind in self._baselines:
            params = self.space.suggest_fixed(trial, self._baselines[kind])
        else:
            params = self.space.suggest(trial)

        # the gate: predicted before any training
        prediction = self.gate.predict(self.space.train_config(params))
        trial.set_user_attr("predicted_peak_bytes", prediction.peak_bytes)
        trial.set_user_attr("breakdown", prediction.breakdown)
        trial.set_user_attr("fits", prediction.fits)
        trial.set_user_attr("gated", not prediction.fits)
        trial.set_user_attr("lowest_layer", prediction.lowest_layer)
        trial.set_user_attr("trainable_layers", prediction.trainable_layers)
        if not prediction.fits:
            reason = self.gate.reason(prediction)
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)

        prune = kind == SEARCH and not self.multi_objective  # baselines always run to the end

        def on_eval(step: int, value: float) -> None:
            if self.multi_objective:  # Optuna has no intermediate values for several objectives
                return
            if math.isfinite(value):
                trial.report(value, step)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} of {self.steps}: {self.workload.metric_name}={value:.4g}")

        from planner.sampling import DivergedError

        start = perf_counter()
        try:
            result = self.proxy(self.workload, params, batch_size=self.space.batch_size_of(params), steps=self.steps,
                                eval_every=self.eval_every, seed=self.seed, on_eval=on_eval)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("reason", str(exc))
            trial.set_user_attr("train_seconds", perf_counter() - start)
            raise
        except DivergedError as exc:
            # a diverged run is a failed trial, not a crash: no traceback, the study goes on
            trial.set_user_attr("reason", f"diverged: {exc}")
            trial.set_user_attr("train_seconds", perf_counter() - start)
            return (math.nan, math.nan) if self.multi_objective else math.nan
        except Exception as exc:
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:500])
            trial.set_user_attr("train_seconds", perf_counter() - start)
            raise
        trial.set_user_attr("metric", result.metric)
        trial.set_user_attr("importance", result.history)
        trial.set_user_attr("train_seconds", result.train_seconds)
        if not math.isfinite(result.metric):
            trial.set_user_attr("reason", f"{self.workload.metric_name} is {result.metric}")
        if self.multi_objective:
            return result.metric, float(prediction.peak_bytes)
        return result.metric
