"""The trial record: what every trial of `planner tune` stores about itself in Optuna's ``trial.user_attrs``.

Each key of ``user_attrs`` is one field of :class:`TrialRecord` (same names, same JSON values as studies written
before this module existed, so older storages read unchanged). Read a trial with :func:`read`; write with
:func:`store` (some fields, each one storage write, in the order given), :func:`store_in` (by trial id, from
another thread), :func:`write` (a whole record) or :func:`enqueue` (a queued trial and its record).

The kind of a trial (``user_attrs['kind']``: searched, a baseline or a confirmation run) is one of
:mod:`planner.tune.study.kinds`; a trial that never stored a kind is a searched one.

This module is a leaf: it imports nothing from :mod:`planner.tune` but those kinds (a leaf too), so every module of
it can depend on it; and it does not import optuna at run time (``import planner.tune`` stays free of it): trial
states are compared by name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError, WithJsonSchema

from planner.tune.study.kinds import KIND_FORMS, SEARCH, Baseline, Confirm, TrialKind, parse_kind

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

INTERRUPTED = "interrupted (Ctrl-C or SIGTERM) before the trial finished"
_INTERRUPTED_BEFORE = "interrupted (Ctrl-C) before the trial finished"  # studies written by earlier versions
WORKER_DIED = "worker died"  # the start of the reason of a trial whose process died (planner.tune.storage.lifecycle)


class TrialRecordError(ValueError):
    """A trial whose ``user_attrs`` do not form a :class:`TrialRecord`."""


# ---- the kind as a record field ------------------------------------------------------------------


def _kind(value) -> TrialKind:
    return parse_kind(value)


Kind = Annotated[
    TrialKind,
    PlainValidator(_kind),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": f"{KIND_FORMS}"}),
]


# ---- the record ---------------------------------------------------------------------------------


class ProxyPlan(BaseModel):
    """The plan the proxy trained for a target point (:func:`planner.tune.proxy.mapping.proxy_params`)."""

    model_config = ConfigDict(extra="allow")

    active_layers: int = Field(description="active layers of the proxy")
    min_depth: int = Field(description="the proxy's lowest layer the sampler may draw")
    batch_size: int | None = Field(None, description="the proxy's batch size")


class MeasuredDraw(BaseModel):
    """One draw of a CPU run of the target: its measured training peak and the cost model's for that set of layers."""

    layers: list[int] = Field(description="the decoder layers the draw trained (target numbering)")
    measured_bytes: int = Field(description="peak live tensor bytes while the draw trained")
    predicted_bytes: int | None = Field(None, description="the CPU cost model's peak for these layers as a fixed set")


class MeasuredMemory(BaseModel):
    """What a proxy run of the target itself used (:mod:`planner.tune.proxy.train`), next to the prediction: on CUDA the
    allocator's counters; on the CPU live tensor bytes per draw, each checked draw predicted again."""

    model_config = ConfigDict(extra="allow")

    device: str = Field("cuda", description="where it ran")
    draws: list[MeasuredDraw] | None = Field(None, description="CPU runs: the draws, highest measured peak first")
    levers_not_run: list[str] | None = Field(
        None,
        description="CPU runs: levers of the point the proxy loop does not "
        "run (planner.tune.proxy.train.ran_form); predicted without",
    )

    max_reserved_bytes: int | None = Field(None, description="the allocator's peak reserved bytes")
    max_allocated_bytes: int | None = Field(None, description="the allocator's peak allocated bytes")
    device_used_bytes: int = Field(
        description="memory in use at the peak: on CUDA reserved plus outside the allocator, "
        "on the CPU live tensor bytes"
    )
    outside_allocator_bytes: int | None = Field(
        None, description="device memory outside the allocator (context, others)"
    )
    free_before_bytes: int | None = Field(None, description="free device memory before the run")
    prediction_error: float = Field(
        description="(predicted - used) / used: > 0 when the cost model over-predicts (CPU: the "
        "checked draw furthest off)"
    )


class WorkerIdentity(BaseModel):
    """The process running a trial (:func:`planner.tune.storage.processes.process_identity` plus its run token)."""

    model_config = ConfigDict(extra="allow")

    host: str = Field(
        description="machine key: host name, boot id and pid namespace (planner.tune.storage.processes.machine_key)"
    )
    pid: int = Field(description="process id on that machine")
    started: str | None = Field(None, description="the process's start time in clock ticks since boot (None: unknown)")
    run: str | None = Field(None, description="token of the run inside the process (one per attached Worker)")


QUEUED = ("lr_sweep", "confirm_of", "confirm_seed", "levers")  # what a trial is queued with, asked again on a retry


class TrialRecord(BaseModel):
    """Everything a trial of `planner tune` records in ``user_attrs``; every field is one key (absent: None).

    Its params (the target's point: active_layers, min_depth, period, scorer, ..., lr) are Optuna's ``trial.params``.
    Keys this version does not know are kept (``extra``), so a record read and written again loses nothing.
    """

    model_config = ConfigDict(extra="allow")

    # what the trial is, set when it is queued (or on its first step, for a drawn one)
    kind: Kind = Field(SEARCH, description=f"what the trial is: {KIND_FORMS} (absent: 'search')")
    levers: dict[str, Any] | None = Field(
        None,
        description="memory levers it ran with beyond its params (TrainConfig field -> value): a baseline's "
        "recipe form, a searched point's fitting form",
    )
    lr_sweep: float | None = Field(
        None,
        description="a baseline's learning-rate sweep run: the factor on its default rate (None or 1: the default)",
    )
    confirm_of: int | None = Field(None, description="a confirmation run: the trial whose point it trains again")
    confirm_seed: int | None = Field(None, description="a confirmation run: its seed index")
    retry_of: int | None = Field(None, description="a retry of an interrupted trial: the number of its first attempt")
    offered: bool | None = Field(None, description="a searched trial queued as one of the budget's offered points")

    # the gate: the target's predicted memory, before any training
    predicted_peak_bytes: int | None = Field(None, description="the target's predicted peak memory at this point")
    breakdown: dict[str, int] | None = Field(
        None, description="that peak by part (weights, gradients, optimizer, activations, transient, overhead), bytes"
    )
    fits: bool | None = Field(None, description="whether the predicted peak fits the budget")
    gated: bool | None = Field(None, description="refused by the gate (over budget, never trained): not fits")
    min_depth: int | None = Field(None, description="the lowest layer the sampler may draw, after lowering to L - γ")
    lowest_layer: int | None = Field(None, description="the lowest trainable layer of the worst-case draw (-1: none)")
    trainable_layers: list[int] | None = Field(None, description="the worst-case draw's trainable layers")
    proxy_plan: ProxyPlan | None = Field(None, description="the plan the proxy trains for this point")
    proxy_key: str | None = Field(None, description="the proxy run this point maps to (equal keys: one run, reused)")
    target_lr: float | None = Field(None, description="the proxy's learning rate carried to the target's width")

    # the outcome
    reason: str | None = Field(
        None, description="why it was gated, pruned, failed or interrupted (or why its metric is not finite)"
    )
    available_bytes: int | None = Field(None, description="free device memory reported by a proxy run out of memory")
    train_seconds: float | None = Field(None, description="wall time of its proxy run")
    metric: float | None = Field(None, description="the proxy's held-out metric (may be NaN: diverged)")
    secondary: dict[str, float] | None = Field(None, description="figures shown next to the metric, e.g. accuracy")
    importance: list[dict[str, Any]] | None = Field(
        None, description="the layer sampler's history, thinned: per re-draw its step, active layers and weights"
    )
    measured_memory: MeasuredMemory | None = Field(None, description="a CUDA proxy run of the target: what it used")
    reused_from: int | None = Field(None, description="the finished trial whose identical proxy run gave its result")

    # its life across processes (planner.tune.storage.lifecycle)
    worker: WorkerIdentity | None = Field(None, description="the process that runs or ran it")
    heartbeat: float | None = Field(None, description="time.time() of its worker's latest heartbeat")

    @property
    def finite_metric(self) -> float | None:
        """The metric when it is a finite number, else None."""
        return None if self.metric is None or not math.isfinite(self.metric) else float(self.metric)

    @property
    def interrupted(self) -> bool:
        """Stopped from outside (Ctrl-C, SIGTERM, a dead worker)."""
        reason = self.reason or ""
        return reason in (INTERRUPTED, _INTERRUPTED_BEFORE) or reason.startswith(WORKER_DIED)

    @property
    def is_confirm(self) -> bool:
        """A confirmation run."""
        return isinstance(self.kind, Confirm)

    @property
    def is_sweep(self) -> bool:
        """A baseline's run at another learning rate than its default."""
        return isinstance(self.kind, Baseline) and self.lr_sweep is not None and self.lr_sweep != 1.0

    def retry(self, first: int) -> TrialRecord:
        """The record a retry of this trial is queued with: its kind, what it was queued with, ``retry_of`` ``first``."""
        return TrialRecord(
            kind=self.kind, retry_of=first, **{k: getattr(self, k) for k in QUEUED if k in self.model_fields_set}
        )

    def attrs(self) -> dict:
        """The fields that were set, as ``user_attrs`` (JSON types; the kind as its string)."""
        return self.model_dump(exclude_unset=True)


FIELDS = frozenset(TrialRecord.model_fields)


def _record(attrs: dict, what: str) -> TrialRecord:
    """``attrs`` validated; :class:`TrialRecordError` names ``what`` they are and every field in error."""
    try:
        return TrialRecord.model_validate(attrs)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'record'}: "
            + (str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"])
            for e in exc.errors()
        )
        raise TrialRecordError(f"{what} must be a planner trial record, but {problems}") from None


def _attrs_of(trial) -> str:
    return f"trial {getattr(trial, 'number', '?')}'s user_attrs"


def read(trial) -> TrialRecord:
    """The record of ``trial`` (a FrozenTrial, or a running ``optuna.Trial``); :class:`TrialRecordError` when it
    holds a field of the wrong type or a kind :func:`parse_kind` refuses."""
    return _record(dict(trial.user_attrs), _attrs_of(trial))


def _values(values: dict) -> dict:
    unknown = sorted(values.keys() - FIELDS)
    if unknown:
        raise TypeError(f"a trial record has no field {', '.join(unknown)} (fields: {', '.join(sorted(FIELDS))})")
    dumped = _record(values, "the fields to store").model_dump(include=set(values))
    return {k: dumped[k] for k in values}  # in the caller's order


def store(trial, **values) -> None:
    """Validate ``values`` (field -> value) and store each with ``trial.set_user_attr``, in the order given."""
    for key, value in _values(values).items():
        trial.set_user_attr(key, value)


def store_in(storage, trial_id: int, **values) -> None:
    """:func:`store` through the storage, for a trial known by its id (a heartbeat thread, a reaper)."""
    for key, value in _values(values).items():
        storage.set_trial_user_attr(trial_id, key, value)


def write(trial, record: TrialRecord) -> None:
    """Store every field ``record`` set."""
    for key, value in record.attrs().items():
        trial.set_user_attr(key, value)


def enqueue(study, params: dict, record: TrialRecord) -> None:
    """Queue a trial of ``params`` that starts with ``record`` (``study.enqueue_trial``)."""
    study.enqueue_trial(params, user_attrs=record.attrs())


# ---- predicates on stored trials (each reads and validates only the fields it needs) --------------


def _part(trial, *names: str) -> TrialRecord:
    attrs = trial.user_attrs
    return _record({k: attrs[k] for k in names if k in attrs}, _attrs_of(trial))


def kind_of(trial: FrozenTrial) -> TrialKind:
    """The trial's kind (:data:`SEARCH` when it stored none)."""
    return _part(trial, "kind").kind


def interrupted(trial: FrozenTrial) -> bool:
    """A trial stopped from outside (Ctrl-C, SIGTERM, a dead worker): it never counts toward ``--n-trials``."""
    return _part(trial, "reason").interrupted


def counted(trial: FrozenTrial) -> bool:
    """A trial that counts toward ``--n-trials``: complete, pruned or failed, but not interrupted."""
    return trial.state.name in ("COMPLETE", "PRUNED", "FAIL") and not interrupted(trial)


def is_confirm(trial: FrozenTrial) -> bool:
    """A confirmation run (:class:`Confirm`)."""
    return _part(trial, "kind").is_confirm


def is_sweep(trial: FrozenTrial) -> bool:
    """A baseline's run at another learning rate than its default (counted apart from ``--n-trials``)."""
    return _part(trial, "kind", "lr_sweep").is_sweep


def trained(trial: FrozenTrial) -> bool:
    """Complete, within the budget, with a finite metric."""
    rec = _part(trial, "fits", "metric")
    return trial.state.name == "COMPLETE" and rec.fits is True and rec.finite_metric is not None
