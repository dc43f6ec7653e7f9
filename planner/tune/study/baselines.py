"""Reference configurations run inside every study, so a result says how much tuning wins.

- ``baseline:lisa``: LISA's defaults (Pan et al. 2024): γ=2 layers drawn uniformly every K=20
  steps, embeddings and head always trainable, the search's default learning rate;
- ``baseline:full``: full fine-tuning (γ=L: every layer, embeddings and head), gated like any
  trial, so it runs only where it fits;
- ``baseline:lora``: LoRA rank 16 on every layer's linear modules, embeddings and head frozen;
- ``baseline:qlora``: the same adapters over NF4 base weights with double quantization and
  gradient checkpointing (QLoRA, Dettmers et al. 2023, as peft's ``prepare_model_for_kbit_training`` runs it).

Baselines as users run them: each is tried in the cheapest standard form that fits the budget,
walking its :data:`RECIPES` in order (as it is; with gradient checkpointing; then the memory
levers its community uses: 8-bit AdamW for LISA, torchtune's single-device full recipe for full
fine-tuning: paged 8-bit AdamW, the step in backward, checkpointing, the loss in 8 chunks). The
form it ran in is recorded (its record's ``levers``, :mod:`planner.tune.study.record`) and named wherever the baseline is shown;
only a baseline that fits in no form is "does not fit" (trained in its last form, gated).

Fair comparison: before confirmation (:mod:`planner.tune.study.confirm`), each baseline that trained
within the budget also runs at the other :data:`LR_SWEEP_FACTORS` times its default learning
rate (trials of its kind, ``lr_sweep`` = the factor in their record, not counted toward
``--n-trials``), and is compared at the best of them (:func:`best_of_kind`): a win over a
baseline is then the method's, not a learning rate's. A baseline over budget runs once (gated).

Every study also starts with the points :func:`offered_points` finds: the most active layers
the budget allows, with embeddings and head frozen (the most layers of all) and trainable (LISA's
recipe with more layers), searched trials like any other, marked ``offered``.
"""

from __future__ import annotations

from dataclasses import replace

from planner.config import TrainConfig
from planner.levers import labels, lever_fields
from planner.recipes import CHECKPOINTING, QLORA, TORCHTUNE_FULL
from planner.tune.study import record
from planner.tune.search.forms import fits as fits_in_a_form
from planner.tune.study.kinds import SEARCH, Baseline
from planner.tune.study.record import TrialRecord, counted, interrupted
from planner.tune.search.space import DEFAULT_LR, LISA_ACTIVE_LAYERS, LISA_PERIOD, SearchSpace, TrialParams

_LEVER_DEFAULTS = {name: spec[1].default for name, spec in lever_fields().items()}
LORA_BASELINE_RANK = 16
# LoRA adapters start at zero and are trained from scratch: they take a larger step than
# full weights (Hu et al. 2021 fine-tune GPT-2 with 2e-4 vs 1e-5..5e-5 for full fine-tuning)
LORA_LR_FACTOR = 5.0
LISA_BASELINE, FULL_BASELINE = Baseline("lisa"), Baseline("full")
LORA_BASELINE, QLORA_BASELINE = Baseline("lora"), Baseline("qlora")
KINDS = (LISA_BASELINE, FULL_BASELINE, LORA_BASELINE, QLORA_BASELINE)
# per kind, the forms users run, cheapest last: the first that fits is the baseline
RECIPES: dict[Baseline, tuple[dict, ...]] = {
    LISA_BASELINE: ({}, CHECKPOINTING, {**CHECKPOINTING, "optimizer": "adamw8bit"}),
    FULL_BASELINE: ({}, CHECKPOINTING, TORCHTUNE_FULL),
    LORA_BASELINE: ({}, CHECKPOINTING),
    QLORA_BASELINE: (QLORA,),
}
# a baseline's learning-rate sweep: a factor of 3 around its default brackets the rates that train
# the built-in proxy (LISA's defaults on the default task: 0.823 / 0.394 / 0.373 at 3.3e-4 / 1e-3 / 3e-3;
# on `sort` 1.224 / 0.752 / 0.648: reports/bench_workloads.txt's studies)
LR_SWEEP_FACTORS = (1 / 3, 1.0, 3.0)


def _nearest(value, choices):
    return min(choices, key=lambda c: abs(c - value))


def _lr(space: SearchSpace, lr: float) -> float:
    if space.lr_choices is not None:
        return _nearest(lr, space.lr_choices)
    return min(max(lr, space.lr_range[0]), space.lr_range[1])


def in_form(point: TrialParams, form: dict) -> TrialParams:
    """``point`` run with the levers of ``form`` (checkpointing is a searched field; the rest ride in ``levers``)."""
    rest = tuple(sorted((k, v) for k, v in form.items() if k != "gradient_checkpointing"))
    return replace(point, gradient_checkpointing=bool(form.get("gradient_checkpointing", False)), levers=rest)


def trial_point(trial, space: SearchSpace) -> TrialParams:
    """The point ``trial`` ran: its params (a sampled ``quantize`` among them), and the levers recorded with it
    (a baseline's recipe, a searched point's fitting form)."""
    point = space.from_params(trial.params)
    levers = {**dict(point.levers), **(record.read(trial).levers or {})}
    return replace(point, levers=tuple(sorted(levers.items())))


def trial_form(point: TrialParams, trial) -> TrialParams:
    """``point`` in the form ``trial`` ran in (its checkpointing param and recorded levers)."""
    form = dict(record.read(trial).levers or {})
    form["gradient_checkpointing"] = bool(trial.params.get("gradient_checkpointing", point.gradient_checkpointing))
    return in_form(point, form)


def trial_form_words(trial) -> str:
    """The levers a trial ran with, in words, e.g. `` (checkpointing, NF4 + double quant)``; empty when none."""
    sampled = {"quantize": trial.params["quantize"]} if trial.params.get("quantize") else {}
    form = {**sampled, **(record.read(trial).levers or {})}
    form["gradient_checkpointing"] = bool(trial.params.get("gradient_checkpointing", False))
    words = [w for w in labels(TrainConfig.model_construct(**{**_LEVER_DEFAULTS, **form})) if w]
    return f" ({', '.join(words)})" if words else ""


BASELINE_LABELS = {
    LISA_BASELINE: "LISA defaults",
    FULL_BASELINE: "full fine-tuning",
    LORA_BASELINE: "LoRA",
    QLORA_BASELINE: "QLoRA",
}
_FIT_DEFAULTS = {
    name: _LEVER_DEFAULTS[name]
    for name in ("gradient_checkpointing", "optimizer_in_backward", "loss_chunks", "quantize")
}


def _methods(num_layers: int) -> dict[Baseline, dict]:
    """What each baseline trains (the same points :func:`_plain_points` gives the search, as config fields)."""
    static = dict(active_layers=None, min_depth=0)
    lora = dict(layers="all", train_embeddings=False, train_head=False, lora_rank=LORA_BASELINE_RANK, **static)
    return {
        LISA_BASELINE: dict(
            layers=None,
            active_layers=min(LISA_ACTIVE_LAYERS, num_layers),
            min_depth=0,
            train_embeddings=True,
            train_head=True,
            lora_rank=None,
        ),
        FULL_BASELINE: dict(layers="all", train_embeddings=True, train_head=True, lora_rank=None, **static),
        LORA_BASELINE: lora,
        QLORA_BASELINE: lora,
    }


def baseline_configs(base: TrainConfig, num_layers: int, fits=None) -> dict[Baseline, TrainConfig]:
    """Each baseline on ``base``'s training shape in the first form of :data:`RECIPES` that ``fits(config)`` admits
    (the last where none does; the first without ``fits``): the configurations reports cost where a study trained
    no baseline, the forms its trials would have run in. Memory-only levers ``base`` pulled start from their
    defaults, so a form sets them alone."""
    data = {**base.model_dump(), **_FIT_DEFAULTS}
    out = {}
    for kind, method in _methods(num_layers).items():
        forms = [TrainConfig(**{**data, **method, **form}) for form in RECIPES[kind]]
        out[kind] = next((c for c in forms if fits(c)), forms[-1]) if fits is not None else forms[0]
    return out


def baseline_points(space: SearchSpace, gate=None) -> dict[Baseline, TrialParams]:
    """Kind -> fixed point, in the cheapest form of :data:`RECIPES` that ``gate`` lets through (without a
    gate, or where no form fits, the last form). LISA needs the ``uniform`` scorer in the space."""
    return {kind: _cheapest(kind, point, space, gate) for kind, point in _plain_points(space).items()}


def _cheapest(kind: Baseline, point: TrialParams, space: SearchSpace, gate) -> TrialParams:
    # a space without checkpointing among its choices runs every form without it
    forms = [
        in_form(point, {k: v for k, v in form.items() if k != "gradient_checkpointing" or v in space.checkpointing})
        for form in RECIPES[kind]
    ]
    if gate is not None:
        for p in forms:
            if gate.predict(space.train_config(p)).fits:
                return p
    return forms[-1] if gate is not None else forms[0]


def _plain_points(space: SearchSpace) -> dict[Baseline, TrialParams]:
    L = space.num_layers
    period = _nearest(LISA_PERIOD, space.periods)
    scorer = "uniform" if "uniform" in space.scorers else space.scorers[0]
    both = True in space.embedding_choices and True in space.head_choices
    neither = False in space.embedding_choices and False in space.head_choices
    out: dict[Baseline, TrialParams] = {}
    if "uniform" in space.scorers and both:
        out[LISA_BASELINE] = space.point(
            active_layers=min(LISA_ACTIVE_LAYERS, L),
            period=period,
            scorer="uniform",
            train_embeddings=True,
            train_head=True,
            lr=_lr(space, DEFAULT_LR),
        )
    if both:
        # γ = L: every draw is every layer, whatever the scorer and period
        out[FULL_BASELINE] = space.point(
            active_layers=L,
            period=period,
            scorer=scorer,
            train_embeddings=True,
            train_head=True,
            lr=_lr(space, DEFAULT_LR),
        )
    if neither:
        lora_point = space.point(
            active_layers=L,
            period=period,
            scorer=scorer,
            train_embeddings=False,
            train_head=False,
            lr=_lr(space, DEFAULT_LR * LORA_LR_FACTOR),
        )
        out[LORA_BASELINE] = TrialParams(**{**lora_point.__dict__, "lora_rank": LORA_BASELINE_RANK})
        out[QLORA_BASELINE] = out[LORA_BASELINE]
    return out


def lr_sweep(space: SearchSpace, point: TrialParams) -> list[tuple[float, TrialParams]]:
    """(factor, point) for each rate of the sweep around ``point.lr``, snapped into the space; repeats dropped."""
    out, seen = [], set()
    for factor in LR_SWEEP_FACTORS:
        lr = _lr(space, point.lr * factor)
        if lr not in seen:
            seen.add(lr)
            out.append((factor, replace(point, lr=lr)))
    return out


def _record(kind: Baseline, point: TrialParams, **more) -> TrialRecord:
    return TrialRecord(kind=kind, levers=dict(point.levers), **more)


def enqueue_baselines(study, space: SearchSpace, gate=None) -> list[Baseline]:
    """Queue every baseline (its cheapest fitting form) at its default learning rate as a fixed trial marked
    with its kind and levers; returns the kinds."""
    points = baseline_points(space, gate)
    for kind, point in points.items():
        record.enqueue(study, space.enqueue_params(point), _record(kind, point))
    return list(points)


def enqueue_missing_baselines(study, space: SearchSpace, gate=None) -> list[Baseline]:
    """Queue the baselines a study holds no trial of (a worker killed while it created the study); returns their kinds."""
    have = {record.kind_of(t) for t in study.get_trials(deepcopy=False)}
    missing = {kind: point for kind, point in baseline_points(space, gate).items() if kind not in have}
    for kind, point in missing.items():
        record.enqueue(study, space.enqueue_params(point), _record(kind, point))
    return list(missing)


def enqueue_sweeps(study, space: SearchSpace) -> int:
    """Queue the missing learning rates of every baseline whose default trial trained within the budget, in the
    form (levers) that trial ran in."""
    from optuna.trial import TrialState  # optuna: deferred, 'planner tune --help' loads this module

    trials = study.get_trials(deepcopy=False)
    queue = []
    for kind, point in baseline_points(space).items():
        of_kind = [t for t in trials if record.kind_of(t) == kind and not interrupted(t)]
        ran = [t for t in of_kind if t.state == TrialState.COMPLETE and record.read(t).fits is True]
        if not ran:
            continue
        point = trial_form(point, ran[0])
        have = {float(t.params["lr"]) for t in of_kind if "lr" in t.params} | {
            float(t.system_attrs.get("fixed_params", {}).get("lr", -1))
            for t in of_kind
            if t.state == TrialState.WAITING
        }
        seconds = record.read(ran[0]).train_seconds or 0.0
        queue += [(seconds, kind, p, factor) for factor, p in lr_sweep(space, point) if p.lr not in have]
    # the longest runs first (as the baseline's own trial took): runs trained at once then end together
    for _, kind, p, factor in sorted(queue, key=lambda run: -run[0]):
        record.enqueue(study, space.enqueue_params(p), _record(kind, p, lr_sweep=factor))
    return len(queue)


def best_of_kind(trials, kind: Baseline, direction: str):
    """The trial a baseline is compared at: its best trained trial of the sweep (the latest finished one
    when none trained); None when the study has none of ``kind``."""
    of_kind = [t for t in trials if record.kind_of(t) == kind and counted(t)]
    sign = 1.0 if direction == "maximize" else -1.0

    def score(t) -> tuple[bool, float, int]:
        m = record.read(t).finite_metric
        if record.trained(t) and m is not None:  # trained: its metric is finite
            return True, sign * m, -t.number
        return False, 0.0, t.number

    return max(of_kind, key=score, default=None)


def offered_points(space: SearchSpace, gate) -> list[TrialParams]:
    """Where the budget allows more active layers higher up: per embeddings/head choice (frozen first, then
    trainable) and checkpointing choice, the frontier point with the most layers (the lowest ``min_depth``
    among equals), at LISA's period and the default learning rate."""
    fits = fits_in_a_form(space, gate)
    best: dict[tuple[bool, bool, bool], TrialParams] = {}
    for p in space.frontier(fits) + space.frontier(fits, ends=True):
        key = (p.train_embeddings, p.train_head, p.gradient_checkpointing)
        cur = best.get(key)
        if cur is None or (p.active_layers, -p.min_depth) > (cur.active_layers, -cur.min_depth):
            best[key] = p
    scorer = "uniform" if "uniform" in space.scorers else space.scorers[0]
    return [
        replace(p, period=_nearest(LISA_PERIOD, space.periods), scorer=scorer, lr=_lr(space, DEFAULT_LR))
        for _, p in sorted(best.items())
    ]


def enqueue_offered(study, space: SearchSpace, gate, room: int | None = None) -> int:
    """Queue :func:`offered_points` as searched trials, at most ``room`` of them; returns how many."""
    points = offered_points(space, gate)[: room if room is not None else None]
    for p in points:
        record.enqueue(study, space.enqueue_params(p), TrialRecord(kind=SEARCH, offered=True))
    return len(points)
