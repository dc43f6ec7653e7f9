"""The trial record (planner.tune.study.record): kinds (planner.tune.study.kinds), a typed record written to and read
back from Optuna trials."""

import ast
import copy
import math
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from planner.tune.study import kinds, record
from planner.tune.study.baselines import KINDS
from planner.tune.study.kinds import SEARCH, BadTrialKind, Baseline, Confirm, Search, TrialKind, parse_kind
from planner.tune.study.record import INTERRUPTED, TrialRecord, TrialRecordError

KIND_CASES = [
    (SEARCH, Search, "search"),
    (Baseline("lisa"), Baseline, "baseline:lisa"),
    (Baseline("lora"), Baseline, "baseline:lora"),
    (Baseline("my_recipe-2"), Baseline, "baseline:my_recipe-2"),
    (Confirm(23, 0), Confirm, "confirm:23:0"),
    (Confirm(0, 11), Confirm, "confirm:0:11"),
]

# a trial as `planner tune` wrote it before the record module existed: the same keys and JSON values
OLD_SEARCHED = {
    "kind": "search",
    "levers": {"optimizer_in_backward": True},
    "predicted_peak_bytes": 21_000_000_000,
    "breakdown": {
        "weights": 16_000_000_000,
        "gradients": 1_000_000_000,
        "optimizer": 2_000_000_000,
        "activations": 1_500_000_000,
        "transient": 300_000_000,
        "overhead": 200_000_000,
    },
    "fits": True,
    "gated": False,
    "min_depth": 4,
    "lowest_layer": 4,
    "trainable_layers": [4, 9, 31],
    "proxy_plan": {"active_layers": 2, "min_depth": 1, "batch_size": 8},
    "proxy_key": "g2|d1|b8|uniform",
    "target_lr": 1.25e-4,
    "metric": 0.8125,
    "importance": [{"step": 0, "active": [4, 9], "weights": [0.25, 0.75]}],
    "train_seconds": 41.5,
    "secondary": {"accuracy": 0.5},
    "measured_memory": {
        "max_reserved_bytes": 100,
        "max_allocated_bytes": 90,
        "device_used_bytes": 120,
        "outside_allocator_bytes": 20,
        "free_before_bytes": 1000,
        "prediction_error": 0.25,
    },
    "worker": {"host": "box|1234abcd|4026531836", "pid": 4242, "started": "987654", "run": "0123456789ab"},
    "heartbeat": 1_700_000_000.5,
}
OLD_QUEUED = [  # what enqueue_trial was given, per writer
    {"kind": "baseline:full", "levers": {"optimizer": "paged_adamw8bit", "loss_chunks": 8}},  # a baseline
    {"kind": "baseline:lisa", "levers": {}, "lr_sweep": 1 / 3},  # its learning-rate sweep
    {"kind": "search", "offered": True},  # an offered point
    {"kind": "confirm:23:1", "confirm_of": 23, "confirm_seed": 1},  # a confirmation run
    {"kind": "baseline:lisa", "retry_of": 5, "lr_sweep": 3.0},  # a retry of an interrupted sweep run
]


def _frozen(attrs, number=7, state=TrialState.COMPLETE):
    trial = create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs=attrs,
    )
    trial.number = number
    return trial


@pytest.mark.parametrize("kind,cls,text", KIND_CASES, ids=[c[2] for c in KIND_CASES])
def test_every_kind_is_its_stored_string_and_parses_back(kind, cls, text):
    assert type(kind) is cls and kind == text and hash(kind) == hash(text) and str(kind) == text
    assert type(str(kind)) is str
    back = parse_kind(text)
    assert type(back) is cls and back == kind
    assert copy.deepcopy(kind) == kind and type(pickle.loads(pickle.dumps(kind))) is cls
    assert eval(repr(kind), {"Search": Search, "Baseline": Baseline, "Confirm": Confirm}) == kind


def test_kind_fields():
    assert Baseline("qlora").name == "qlora" and (Confirm(23, 4).trial, Confirm(23, 4).seed) == (23, 4)
    assert [k.name for k in KINDS] == ["lisa", "full", "lora", "qlora"] and all(isinstance(k, Baseline) for k in KINDS)
    assert {"baseline:lora": 1}[Baseline("lora")] == 1  # kinds index what older code keyed by string
    with pytest.raises(TypeError):
        TrialKind("search")


@pytest.mark.parametrize("kind,cls,text", KIND_CASES, ids=[c[2] for c in KIND_CASES])
def test_round_trip_through_a_study_for_every_kind(tmp_path, kind, cls, text):
    """Written to a trial (set_user_attr) and to a queued trial (enqueue_trial), stored as JSON, read back equal."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="r")
    full = TrialRecord(
        kind=kind,
        **{k: v for k, v in OLD_SEARCHED.items() if k != "kind"},
        lr_sweep=3.0,
        confirm_of=23,
        confirm_seed=0,
        retry_of=2,
        offered=True,
        reason="diverged: loss is nan",
        available_bytes=5,
        reused_from=1,
    )
    trial = study.ask()
    record.write(trial, full)
    study.tell(trial, 0.5)
    record.enqueue(study, {"x": 0.25}, TrialRecord(kind=kind, retry_of=3))
    done, queued = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path}/s.db").trials
    got = record.read(done)
    assert got == full and type(got.kind) is cls and got.kind == text
    assert done.user_attrs["kind"] == text and type(done.user_attrs["kind"]) is str  # the stored form is unchanged
    assert queued.state == TrialState.WAITING and record.read(queued) == TrialRecord(kind=kind, retry_of=3)
    assert record.read(queued).model_fields_set == {"kind", "retry_of"}  # what was not written stays unset


def test_store_writes_the_given_fields_in_order_and_validates_them():
    study = optuna.create_study()
    trial = study.ask()
    record.store(trial, predicted_peak_bytes=10, fits=True, gated=False, metric=math.nan)
    assert list(trial.user_attrs) == ["predicted_peak_bytes", "fits", "gated", "metric"]
    assert math.isnan(record.read(trial).metric) and record.read(trial).finite_metric is None
    with pytest.raises(TypeError, match="no field peak"):
        record.store(trial, peak=10)
    with pytest.raises(TrialRecordError, match="fits"):
        record.store(trial, fits="maybe")
    with pytest.raises(TrialRecordError, match="kind"):
        record.store(trial, kind="baseline")
    assert list(trial.user_attrs) == ["predicted_peak_bytes", "fits", "gated", "metric"]  # nothing half-written
    record.store_in(study._storage, trial._trial_id, heartbeat=12.5, reason=INTERRUPTED)
    stored = record.read(study._storage.get_trial(trial._trial_id))  # (the Trial object caches what it wrote)
    assert stored.heartbeat == 12.5 and stored.interrupted


def test_reads_records_written_the_old_way():
    rec = record.read(_frozen(OLD_SEARCHED))
    assert rec.kind == SEARCH and rec.proxy_plan.batch_size == 8 and rec.measured_memory.prediction_error == 0.25
    assert (
        rec.worker.pid == 4242 and rec.breakdown["weights"] == 16_000_000_000 and rec.levers == OLD_SEARCHED["levers"]
    )
    assert rec.attrs() == OLD_SEARCHED  # written back, it is the same JSON
    kinds = [record.read(_frozen(a, state=TrialState.WAITING)) for a in OLD_QUEUED]
    assert [type(r.kind) for r in kinds] == [Baseline, Baseline, Search, Confirm, Baseline]
    assert [r.is_sweep for r in kinds] == [False, True, False, False, True]
    assert kinds[3].is_confirm and (kinds[3].kind.trial, kinds[3].kind.seed) == (23, 1)
    assert [r.attrs() for r in kinds] == OLD_QUEUED
    assert kinds[4].retry(5).attrs() == {"kind": "baseline:lisa", "retry_of": 5, "lr_sweep": 3.0}


def test_old_defaults_and_extras():
    """No kind: a searched trial (the objective stored none before its first step); keys this version does not know
    are kept; the older interrupted reason still means interrupted."""
    rec = record.read(_frozen({"metric": 0.5, "from_a_later_version": [1, 2]}))
    assert rec.kind == SEARCH and "kind" not in rec.model_fields_set and rec.attrs()["from_a_later_version"] == [1, 2]
    old = _frozen({"kind": "search", "reason": "interrupted (Ctrl-C) before the trial finished"}, state=TrialState.FAIL)
    assert record.interrupted(old) and not record.counted(old)
    worker_died = _frozen({"reason": "worker died (process 1 on box ended mid-trial)"}, state=TrialState.FAIL)
    assert record.interrupted(worker_died) and record.counted(
        _frozen({"reason": "diverged: nan"}, state=TrialState.FAIL)
    )
    assert record.trained(_frozen({"fits": True, "metric": 0.5})) and not record.trained(_frozen({"metric": 0.5}))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Search",
        "searched",
        "baseline",
        "baseline:",
        "baseline:a:b",
        "baseline: x",
        "confirm:1",
        "confirm:a:b",
        "confirm:1:2:3",
        "confirm:-1:0",
        "confirm:01:0",
        "confirm: 1:0",
        "lr_sweep:3",
        None,
        3,
        ["search"],
    ],
)
def test_a_bad_kind_is_refused_with_a_clear_error(text):
    with pytest.raises(BadTrialKind, match=r"'search', 'baseline:<name>' or 'confirm:<trial number>:<seed index>'"):
        parse_kind(text)
    with pytest.raises(TrialRecordError, match=r"^trial 7's user_attrs must be a planner trial record, but kind: "):
        record.read(_frozen({"kind": text, "metric": 0.5}))


def test_bad_kind_parts():
    with pytest.raises(BadTrialKind, match="trial number must be an integer >= 0"):
        Confirm(-1, 0)
    with pytest.raises(BadTrialKind, match="seed index"):
        Confirm(1, True)
    with pytest.raises(BadTrialKind, match="baseline's name"):
        Baseline("a:b")


def test_a_wrongly_typed_field_names_trial_and_field():
    with pytest.raises(TrialRecordError, match=r"trial 7's .*predicted_peak_bytes"):
        record.read(_frozen({"kind": "search", "predicted_peak_bytes": "lots"}))


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }


def test_every_field_is_described_and_the_module_is_a_leaf():
    assert all(f.description for f in TrialRecord.model_fields.values())
    allowed = {"__future__", "math", "typing", "pydantic", "optuna"}
    assert {m for m in _imports(record) if m.split(".")[0] not in allowed} == {"planner.tune.study.kinds"}
    assert _imports(kinds) == {"__future__"}


def test_the_documented_keys_are_the_record_fields():
    text = (Path(__file__).resolve().parent.parent / "docs" / "study-record.md").read_text()
    table = text.split("## What a trial records", 1)[1].split("The study's `user_attrs`", 1)[0]
    keys = {
        k
        for line in table.splitlines()
        if line.startswith("| `")
        for k in line.split("|")[1].strip().strip("`").split("`, `")
    }
    assert keys == set(TrialRecord.model_fields)


def test_a_retried_baseline_keeps_the_form_it_was_queued_in():
    """A baseline is queued with its levers (e.g. LISA with the step in backward); a retry of an interrupted run
    must train that same form, not the plain one."""
    queued = TrialRecord(kind=Baseline("lisa"), levers={"optimizer_in_backward": True, "loss_chunks": 8})
    assert queued.retry(7).attrs() == {
        "kind": "baseline:lisa",
        "retry_of": 7,
        "levers": {"optimizer_in_backward": True, "loss_chunks": 8},
    }
