"""A sampled plan over budget as it is runs in the first form (memory-only levers) the gate admits."""

from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from planner.export import export_plan
from planner.plan import Plan
from planner.tune import TuneOptions, run_tune
from planner.tune.study.baselines import trial_point
from planner.tune.search.forms import fitting, form_steps
from planner.tune.search.gate import BudgetGate
from planner.tune.target_space import build_space
from planner.tune.storage.backends import open_storage
from tune_helpers import tiny_workload, write_target_config

WALK = ({"optimizer_in_backward": True}, {"optimizer_in_backward": True, "loss_chunks": 8})


@pytest.fixture(scope="module")
def wl():
    return tiny_workload(num_layers=4)


@pytest.fixture(scope="module")
def target(wl, tmp_path_factory):
    return write_target_config(wl, tmp_path_factory.mktemp("target") / "config.json")


def flags(wl, target, **kw):
    return dict(model=target, seq_len=wl.seq_len, batch_size=8, dtype="float32", device="cpu", **kw)


def space_of(wl, target, **kw):
    opts = TuneOptions(vram=1, **flags(wl, target, **kw))
    t, _ = opts.validate_all()
    return t, build_space(t, opts)


def peaks(t, space, point):
    """The cost model's peak of ``point`` as sampled and in each step of the walk, each predicted on its own."""
    gate = BudgetGate(t.spec, 1, device="cpu")
    return [
        gate.predict(space.train_config(replace(point, levers=tuple(sorted(f.items()))))).peak_bytes
        for f in ({}, *WALK)
    ]


def test_the_walk_is_torchtunes_order_without_the_levers_the_user_fixed():
    assert form_steps({}) == WALK
    assert form_steps({"optimizer_in_backward": False}) == ({"loss_chunks": 8},)
    assert form_steps({"loss_chunks": 4}) == ({"optimizer_in_backward": True},)
    assert form_steps({"optimizer_in_backward": True, "loss_chunks": 1}) == ()


def test_a_point_takes_the_first_form_that_fits(wl, target):
    t, space = space_of(wl, target)
    assert space.forms == WALK
    point = space.point(
        active_layers=4,
        period=5,
        scorer="uniform",
        train_embeddings=False,
        train_head=False,
        lr=1e-3,
        gradient_checkpointing=True,
    )
    plain, backward, both = peaks(t, space, point)
    assert backward < plain  # the step in backward frees each gradient as it is written
    for budget, want in ((plain, {}), (plain - 1, WALK[0])):
        got, prediction = fitting(space, BudgetGate(t.spec, budget, device="cpu"), point)
        assert dict(got.levers) == want and prediction.fits
    # over budget in every form: gated at the last
    got, prediction = fitting(space, BudgetGate(t.spec, min(plain, backward, both) - 1, device="cpu"), point)
    assert dict(got.levers) == WALK[-1] and not prediction.fits and prediction.peak_bytes == both


def test_a_lever_the_user_fixed_is_never_pulled(wl, target):
    t, space = space_of(wl, target, levers={"optimizer_in_backward": False})
    assert space.forms == ({"loss_chunks": 8},)
    point = space.point(
        active_layers=4,
        period=5,
        scorer="uniform",
        train_embeddings=False,
        train_head=False,
        lr=1e-3,
        gradient_checkpointing=True,
    )
    plain, backward, _ = peaks(t, space, point)
    assert backward < plain
    got, prediction = fitting(space, BudgetGate(t.spec, backward, device="cpu"), point)
    assert "optimizer_in_backward" not in dict(got.levers)


def test_a_study_whose_plans_fit_only_with_the_step_in_backward(tmp_path, wl, target):
    """Every plain point is over budget, the same points with the step in backward fit: the trials train in that
    form, record it, and the plan and its exports carry it."""
    t, space = space_of(wl, target)
    cheapest = [peaks(t, space, p) for p in space.cheapest_points()]
    budget = min(p[1] for p in cheapest)
    assert budget < min(p[0] for p in cheapest)  # nothing fits as sampled
    storage = f"sqlite:///{tmp_path}/s.db"
    result = run_tune(
        TuneOptions(
            vram=budget,
            n_trials=4,
            steps=2,
            eval_every=2,
            storage=storage,
            study="f",
            out=str(tmp_path / "plan.yaml"),
            proxy_device="cpu",
            confirm_seeds=0,
            baselines=False,
            jobs=1,  # the sequence seed 0 draws: a static scorer's point drawn with `quantize` fits as drawn
            **flags(wl, target),
        ),
        workload=wl,
        progress=False,
    )
    trials = optuna.load_study(study_name="f", storage=open_storage(storage)).trials
    trained = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("fits")]
    assert trained
    for trial in trained:
        assert trial.user_attrs["levers"]["optimizer_in_backward"] is True
        assert trial.user_attrs["predicted_peak_bytes"] <= budget
        assert dict(trial_point(trial, space).levers)["optimizer_in_backward"] is True
    plan = Plan.load(tmp_path / "plan.yaml")
    assert plan.train.optimizer_in_backward and result.plan.train.optimizer_in_backward
    lost = export_plan(tmp_path / "plan.yaml", "axolotl", tmp_path / "axolotl").lost
    assert any("optimizer step in backward" in line for line in lost)  # axolotl steps after backward: said so


def test_a_static_plan_with_quantized_frozen_layers_trains_end_to_end(tmp_path, wl, target):
    """The semantic scorer's points draw NF4 storage for the layers below the top γ: such a trial is costed as the
    top block with quantized layers below, its proxy trains through the round trip, and the plan carries it."""
    pytest.importorskip("bitsandbytes")
    storage = f"sqlite:///{tmp_path}/s.db"
    run_tune(
        TuneOptions(
            vram="1GB",
            n_trials=10,
            steps=2,
            eval_every=2,
            storage=storage,
            study="q",
            scorers=["semantic"],
            out=str(tmp_path / "plan.yaml"),
            proxy_device="cpu",
            confirm_seeds=0,
            baselines=False,
            jobs=1,  # the sequence seed 0 draws (one quantized trial in ten); two slots draw by timing
            **flags(wl, target),
        ),
        workload=wl,
        progress=False,
    )
    trials = optuna.load_study(study_name="q", storage=open_storage(storage)).trials
    # trained (a pruned trial trained until its pruning)
    done = [
        t
        for t in trials
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) and t.user_attrs.get("fits")
    ]
    quantized = [t for t in done if t.params.get("quantize") == "nf4-dq"]
    assert quantized and len(quantized) < len(done)  # both storages drawn (seed 0)
    # γ = L: nothing stays frozen
    assert all("quantize" not in t.params for t in trials if t.params["active_layers"] == 4)
    t, space = space_of(wl, target, scorers=["semantic"])
    gate = BudgetGate(t.spec, 1, device="cpu")
    for trial in quantized:
        point = trial_point(trial, space)
        cfg = space.train_config(point)
        assert cfg.layers == list(range(4 - point.active_layers, 4)) and cfg.quantize == "nf4-dq"
        assert trial.user_attrs["predicted_peak_bytes"] == gate.predict(cfg).peak_bytes
