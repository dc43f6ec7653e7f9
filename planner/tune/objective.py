"""One trial: choose a target point, gate it on the target's predicted memory, train its proxy plan, record everything.

The trial record (read by reports):
params: gamma, min_depth, gradient_checkpointing, period, scorer, train_embeddings, train_head,
lr (the proxy's), (lora_rank), (batch_size) -- the target's point, in the target's numbering;
user_attrs: kind, predicted_peak_bytes, breakdown, fits, gated, reason, min_depth (after
lowering to L - γ), lowest_layer, trainable_layers, proxy_plan, target_lr, reused_from,
metric, secondary (figures shown next to the metric, e.g. accuracy), importance, train_seconds,
and on CUDA measured_memory (see planner.tune.proxy).
"""

from __future__ import annotations

import math
from dataclasses import replace
from time import perf_counter
from typing import Callable

from planner.tune.forms import fitting
from planner.tune.baselines import SEARCH, baseline_points
from planner.tune.gate import BudgetGate
from planner.units import human_bytes
from planner.tune.lifecycle import INTERRUPTED  # noqa: F401 - set by lifecycle.GuardedObjective on Ctrl-C/SIGTERM
from planner.tune.mapping import proxy_params, reuse_key, target_lr
from planner.tune.proxy import ProxyOutOfMemory, TrainShape, run_proxy
from planner.tune.space import SearchSpace


class Objective:
    """Callable for ``study.optimize``: returns the proxy metric (and the predicted peak in multi-objective mode).

    ``proxy_layers``/``proxy_hidden`` describe the proxy model (default: the target's own
    depth and width), ``proxy_is_target`` whether it is the target itself; ``shape`` how its runs
    are shaped; ``proxy_batch`` its batch size when the space has one batch size (None: the target's).
    """

    def __init__(self, workload, space: SearchSpace, gate: BudgetGate, *, steps: int, eval_every: int, seed: int = 0,
                 multi_objective: bool = False, proxy: Callable = run_proxy, proxy_layers: int | None = None,
                 proxy_hidden: int | None = None, target_hidden: int | None = None, shape: TrainShape | None = None,
                 proxy_batch: int | None = None, proxy_is_target: bool = False):
        self.workload = workload
        self.space = space
        self.gate = gate
        self.steps = steps
        self.eval_every = eval_every
        self.seed = seed
        self.multi_objective = multi_objective
        self.proxy = proxy
        self.proxy_layers = proxy_layers or space.num_layers
        self.proxy_hidden = proxy_hidden
        self.target_hidden = target_hidden
        self.shape = shape
        self.proxy_batch = proxy_batch
        self.proxy_is_target = proxy_is_target
        self._baselines = baseline_points(space)

    def _proxy_batch(self, params) -> int:
        if params.batch_size is None and self.proxy_batch:
            return self.proxy_batch
        return self.space.batch_size_of(params)

    def _reused(self, trial, key: str):
        """A finished trial of this study that trained the same proxy run."""
        from optuna.trial import TrialState

        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("proxy_key") == key and t.user_attrs.get("metric") is not None:
                return t
        return None

    def __call__(self, trial):
        import optuna

        kind = trial.user_attrs.get("kind")
        if kind is None:
            kind = SEARCH
            trial.set_user_attr("kind", kind)
        from planner.tune.confirm import confirm_run

        confirm, seed = confirm_run(trial, self.space, self.seed), self.seed  # a confirmation run: its point and seed
        if confirm is not None:
            params, seed = confirm
        elif kind in self._baselines:
            params = self.space.suggest_fixed(trial, self._baselines[kind])
            params = replace(params, levers=tuple(sorted((trial.user_attrs.get("levers") or {}).items())))
        else:
            params = self.space.suggest(trial)

        # the gate: the target's peak, predicted before any training; a searched point over budget as sampled
        # runs in the first form (memory-only levers) that fits
        if confirm is None and kind not in self._baselines:
            sampled = dict(params.levers)
            params, prediction = fitting(self.space, self.gate, params)
            form = {k: v for k, v in params.levers if k not in sampled}
            if form:
                trial.set_user_attr("levers", form)
        else:
            prediction = self.gate.predict(self.space.train_config(params))
        trial.set_user_attr("predicted_peak_bytes", prediction.peak_bytes)
        trial.set_user_attr("breakdown", prediction.breakdown)
        trial.set_user_attr("fits", prediction.fits)
        trial.set_user_attr("gated", not prediction.fits)
        trial.set_user_attr("min_depth", params.min_depth)
        trial.set_user_attr("lowest_layer", prediction.lowest_layer)
        trial.set_user_attr("trainable_layers", prediction.trainable_layers)
        small = proxy_params(params, target_layers=self.space.num_layers, proxy_layers=self.proxy_layers,
                             is_target=self.proxy_is_target)
        batch = self._proxy_batch(params)
        key = reuse_key(small, batch) + ("" if confirm is None else f"|seed {seed}")
        trial.set_user_attr("proxy_plan", {"gamma": small.gamma, "min_depth": small.min_depth, "batch_size": batch})
        trial.set_user_attr("proxy_key", key)
        if self.proxy_hidden and self.target_hidden:
            trial.set_user_attr("target_lr", target_lr(params.lr, proxy_hidden=self.proxy_hidden, target_hidden=self.target_hidden))
        if not prediction.fits:
            reason = self.gate.reason(prediction)
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason)

        same = self._reused(trial, key)
        if same is not None:  # the proxy run this point maps to was trained already: its result stands
            for name in ("metric", "secondary", "importance", "train_seconds"):
                trial.set_user_attr(name, same.user_attrs.get(name))
            trial.set_user_attr("reused_from", same.number)
            if not self.multi_objective and confirm is None:  # the pruner sees the same curve
                for step, value in sorted(same.intermediate_values.items()):
                    trial.report(value, step)
            metric = float(same.user_attrs["metric"])
            return (metric, float(prediction.peak_bytes)) if self.multi_objective else metric

        prune = kind == SEARCH and not self.multi_objective  # baselines always run to the end

        def on_eval(step: int, value: float) -> None:
            if self.multi_objective or confirm is not None:  # none for several objectives; confirmations never pruned
                return
            if math.isfinite(value):
                trial.report(value, step)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} of {self.steps}: {self.workload.metric_name}={value:.4g}")

        from planner.sampling import DivergedError

        start = perf_counter()
        extra = {"shape": self.shape} if self.shape is not None else {}
        try:
            result = self.proxy(self.workload, small, batch_size=batch, steps=self.steps, eval_every=self.eval_every,
                                seed=seed, on_eval=on_eval, **extra)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("reason", str(exc))
            trial.set_user_attr("train_seconds", perf_counter() - start)
            raise
        except DivergedError as exc:
            # a diverged run is a failed trial, not a crash: no traceback, the study goes on
            trial.set_user_attr("reason", f"diverged: {exc}")
            trial.set_user_attr("train_seconds", perf_counter() - start)
            return (math.nan, math.nan) if self.multi_objective else math.nan
        except ProxyOutOfMemory as exc:
            trial.set_user_attr("reason", f"{exc}: predicted {prediction.peak_bytes} B ({human_bytes(prediction.peak_bytes)}), "
                                          f"available {exc.free_bytes} B ({human_bytes(exc.free_bytes)})")
            trial.set_user_attr("available_bytes", exc.free_bytes)
            trial.set_user_attr("train_seconds", perf_counter() - start)
            raise
        except Exception as exc:
            trial.set_user_attr("reason", f"{type(exc).__name__}: {exc}"[:500])
            trial.set_user_attr("train_seconds", perf_counter() - start)
            raise
        trial.set_user_attr("metric", result.metric)
        trial.set_user_attr("importance", result.history)
        trial.set_user_attr("train_seconds", result.train_seconds)
        if getattr(result, "secondary", None):
            trial.set_user_attr("secondary", result.secondary)  # e.g. the accuracy next to the eval loss
        memory = getattr(result, "memory", None)
        if memory:
            error = (prediction.peak_bytes - memory["device_used_bytes"]) / max(memory["device_used_bytes"], 1)
            trial.set_user_attr("measured_memory", {**memory, "prediction_error": error})
        if not math.isfinite(result.metric):
            trial.set_user_attr("reason", f"{self.workload.metric_name} is {result.metric}")
        if self.multi_objective:
            return result.metric, float(prediction.peak_bytes)
        return result.metric

