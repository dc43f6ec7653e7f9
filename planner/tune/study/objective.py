"""One trial: choose a target point, gate it on the target's predicted memory, train its proxy plan, record everything.

The trial record (read by reports):
params: active_layers, min_depth, gradient_checkpointing, period, scorer, train_embeddings, train_head,
lr (the proxy's), (lora_rank), (batch_size) -- the target's point, in the target's numbering;
user_attrs: a :class:`planner.tune.study.record.TrialRecord` (kind, predicted_peak_bytes, breakdown, fits, gated, reason,
min_depth (after lowering to L - γ), lowest_layer, trainable_layers, proxy_plan, target_lr, reused_from,
metric, secondary (figures shown next to the metric, e.g. accuracy), importance, train_seconds,
and on CUDA measured_memory (see planner.tune.proxy.train)).
"""

from __future__ import annotations

import math
from dataclasses import replace
from time import perf_counter
from typing import Callable

import optuna
from optuna.trial import TrialState

from planner.sampling import DivergedError
from planner.tune.study import record
from planner.tune.study.baselines import baseline_points
from planner.tune.study.confirm import confirm_run
from planner.tune.search.forms import fitting
from planner.tune.search.gate import BudgetGate
from planner.tune.proxy.mapping import proxy_params, reuse_key, target_lr
from planner.tune.proxy.train import ProxyOutOfMemory, TrainShape, ran_form, run_proxy
from planner.tune.study.record import INTERRUPTED  # noqa: F401 - set by lifecycle.GuardedObjective on Ctrl-C/SIGTERM
from planner.tune.study.kinds import SEARCH, Baseline
from planner.tune.search.space import SearchSpace
from planner.units import human_bytes

CPU_DRAWS_CHECKED = 8  # a CPU run's draws predicted again, the highest measured peaks first


class Objective:
    """Callable for ``study.optimize``: returns the proxy metric (and the predicted peak in multi-objective mode).

    ``proxy_layers``/``proxy_hidden`` describe the proxy model (default: the target's own
    depth and width), ``proxy_is_target`` whether it is the target itself; ``shape`` how its runs
    are shaped; ``proxy_batch`` its batch size when the space has one batch size (None: the target's).
    """

    def __init__(
        self,
        workload,
        space: SearchSpace,
        gate: BudgetGate,
        *,
        steps: int,
        eval_every: int,
        seed: int = 0,
        multi_objective: bool = False,
        proxy: Callable = run_proxy,
        proxy_layers: int | None = None,
        proxy_hidden: int | None = None,
        target_hidden: int | None = None,
        shape: TrainShape | None = None,
        proxy_batch: int | None = None,
        proxy_is_target: bool = False,
    ):
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
        self._cpu_gate: BudgetGate | None = None  # the CPU cost model, for CPU runs of the target (_cpu_check)

    def _proxy_batch(self, params) -> int:
        if params.batch_size is None and self.proxy_batch:
            return self.proxy_batch
        return self.space.batch_size_of(params)

    def _cpu_check(self, params, memory: dict) -> dict:
        """A CPU run of the target against the CPU cost model: each draw it measured (the highest peaks first, at
        most :data:`CPU_DRAWS_CHECKED`) predicted again as a fixed set of layers, in the form the run executed
        (:func:`planner.tune.proxy.train.ran_form`); the error is the largest."""
        if self._cpu_gate is None:
            self._cpu_gate = BudgetGate(self.gate.spec, self.gate.vram_bytes, device="cpu")
        cfg, unrun = ran_form(self.space.train_config(params))
        draws = memory["draws"][:CPU_DRAWS_CHECKED]
        for d in draws:
            fixed = cfg.model_copy(update={"layers": d["layers"], "active_layers": None, "min_depth": 0})
            d["predicted_bytes"] = self._cpu_gate.predict(fixed).peak_bytes
        worst = max(draws, key=lambda d: abs(d["predicted_bytes"] - d["measured_bytes"]), default=None)
        error = (worst["predicted_bytes"] - worst["measured_bytes"]) / max(worst["measured_bytes"], 1) if worst else 0.0
        return {**memory, "draws": draws, "prediction_error": error, "levers_not_run": unrun}

    def _reused(self, trial, key: str):
        """A finished trial of this study that trained the same proxy run."""
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            rec = record.read(t)
            if rec.proxy_key == key and rec.metric is not None:
                return t
        return None

    def __call__(self, trial):
        queued = record.read(trial)  # what the trial was queued with (nothing for a drawn one)
        kind = queued.kind
        if "kind" not in queued.model_fields_set:
            record.store(trial, kind=SEARCH)
        confirm, seed = confirm_run(trial, self.space, self.seed), self.seed  # a confirmation run: its point and seed
        if confirm is not None:
            params, seed = confirm
        elif isinstance(kind, Baseline) and kind in self._baselines:
            params = self.space.suggest_fixed(trial, self._baselines[kind])
            params = replace(params, levers=tuple(sorted((queued.levers or {}).items())))
        else:
            params = self.space.suggest(trial)

        # the gate: the target's peak, predicted before any training; a searched point over budget as sampled
        # runs in the first form (memory-only levers) that fits
        if confirm is None and kind not in self._baselines:
            sampled = dict(params.levers)
            params, prediction = fitting(self.space, self.gate, params)
            form = {k: v for k, v in params.levers if k not in sampled}
            if form:
                record.store(trial, levers=form)
        else:
            prediction = self.gate.predict(self.space.train_config(params))
        record.store(
            trial,
            predicted_peak_bytes=prediction.peak_bytes,
            breakdown=prediction.breakdown,
            fits=prediction.fits,
            gated=not prediction.fits,
            min_depth=params.min_depth,
            lowest_layer=prediction.lowest_layer,
            trainable_layers=prediction.trainable_layers,
        )
        small = proxy_params(
            params, target_layers=self.space.num_layers, proxy_layers=self.proxy_layers, is_target=self.proxy_is_target
        )
        batch = self._proxy_batch(params)
        key = reuse_key(small, batch) + ("" if confirm is None else f"|seed {seed}")
        record.store(
            trial,
            proxy_plan={"active_layers": small.active_layers, "min_depth": small.min_depth, "batch_size": batch},
            proxy_key=key,
        )
        if self.proxy_hidden and self.target_hidden:
            record.store(
                trial, target_lr=target_lr(params.lr, proxy_hidden=self.proxy_hidden, target_hidden=self.target_hidden)
            )
        if not prediction.fits:
            reason = self.gate.reason(prediction)
            record.store(trial, reason=reason)
            raise optuna.TrialPruned(reason)

        same = self._reused(trial, key)
        if same is not None:  # the proxy run this point maps to was trained already: its result stands
            done = record.read(same)
            assert done.metric is not None  # _reused picks a trial by its metric
            record.store(
                trial,
                metric=done.metric,
                secondary=done.secondary,
                importance=done.importance,
                train_seconds=done.train_seconds,
                reused_from=same.number,
            )
            if not self.multi_objective and confirm is None:  # the pruner sees the same curve
                for step, value in sorted(same.intermediate_values.items()):
                    trial.report(value, step)
            metric = float(done.metric)
            return (metric, float(prediction.peak_bytes)) if self.multi_objective else metric

        prune = kind == SEARCH and not self.multi_objective  # baselines always run to the end

        def on_eval(step: int, value: float) -> None:
            if self.multi_objective or confirm is not None:  # none for several objectives; confirmations never pruned
                return
            if math.isfinite(value):
                trial.report(value, step)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at step {step} of {self.steps}: {self.workload.metric_name}={value:.4g}"
                )

        start = perf_counter()
        extra = {"shape": self.shape} if self.shape is not None else {}
        try:
            # a confirmation run or a learning-rate sweep is never pruned: only its final evaluation counts, so it
            # makes no other
            result = self.proxy(
                self.workload,
                small,
                batch_size=batch,
                steps=self.steps,
                eval_every=self.steps if confirm is not None or queued.is_sweep else self.eval_every,
                seed=seed,
                on_eval=on_eval,
                **extra,
            )
        except optuna.TrialPruned as exc:
            record.store(trial, reason=str(exc), train_seconds=perf_counter() - start)
            raise
        except DivergedError as exc:
            # a diverged run is a failed trial, not a crash: no traceback, the study goes on
            record.store(trial, reason=f"diverged: {exc}", train_seconds=perf_counter() - start)
            return (math.nan, math.nan) if self.multi_objective else math.nan
        except ProxyOutOfMemory as exc:
            record.store(
                trial,
                reason=f"{exc}: predicted {prediction.peak_bytes} B ({human_bytes(prediction.peak_bytes)}), "
                f"available {exc.free_bytes} B ({human_bytes(exc.free_bytes)})",
                available_bytes=exc.free_bytes,
                train_seconds=perf_counter() - start,
            )
            raise
        except Exception as exc:
            record.store(trial, reason=f"{type(exc).__name__}: {exc}"[:500], train_seconds=perf_counter() - start)
            raise
        record.store(trial, metric=result.metric, importance=result.history, train_seconds=result.train_seconds)
        if getattr(result, "secondary", None):
            record.store(trial, secondary=result.secondary)  # e.g. the accuracy next to the eval loss
        memory = getattr(result, "memory", None)
        if memory and memory.get("device") == "cpu":
            record.store(trial, measured_memory=self._cpu_check(params, memory))
        elif memory:
            error = (prediction.peak_bytes - memory["device_used_bytes"]) / max(memory["device_used_bytes"], 1)
            record.store(trial, measured_memory={**memory, "prediction_error": error})
        if not math.isfinite(result.metric):
            record.store(trial, reason=f"{self.workload.metric_name} is {result.metric}")
        if self.multi_objective:
            return result.metric, float(prediction.peak_bytes)
        return result.metric
