"""Report data from synthetic studies that follow the trial-record contract of `planner tune`."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from planner.config import TrainConfig
from planner.errors import PlannerError
from plan_factory import consistent_plan
from planner.plan import BREAKDOWN_KEYS, Breakdown, Plan
from planner.report import costing
from planner.report import data as rdata
from planner.report import plan as rplan
from planner.report import study as rstudy
from planner.report.trials import pareto_front
from planner.units import GiB, MiB

optuna.logging.set_verbosity(optuna.logging.WARNING)

VRAM = 8 * GiB
L = 4
DIST = {
    "active_layers": IntDistribution(1, L),
    "period": CategoricalDistribution([5, 10, 20, 40]),
    "scorer": CategoricalDistribution(["uniform", "gradnorm", "ist", "semantic"]),
    "train_embeddings": CategoricalDistribution([True, False]),
    "train_head": CategoricalDistribution([True, False]),
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "lora_rank": CategoricalDistribution([0, 16]),
}


def _bd(weights, gradients, optimizer, activations, transient=0.25, overhead=0.5):
    """A breakdown in GiB -> bytes."""
    vals = (weights, gradients, optimizer, activations, transient, overhead)
    return {k: int(v * GiB) for k, v in zip(BREAKDOWN_KEYS, vals)}


def _importance(steps, varying: bool):
    rows = []
    for i, s in enumerate(steps):
        w = [0.25] * L if not varying else [0.1 + 0.05 * i, 0.2, 0.3, 0.4 - 0.05 * i]
        rows.append({"step": s, "active": [i % L, (i + 1) % L], "weights": w})
    return rows


# number, state, kind, active_layers, scorer, emb, metric, breakdown (GiB), gated, lowest, importance-varying
TRIALS = [
    (0, "PRUNED", "baseline:full", 4, "uniform", True, None, (2, 2, 4, 2.25), True, 0, None),
    (1, "COMPLETE", "baseline:lisa", 2, "uniform", True, 0.55, (2, 0.5, 1, 2.25), False, 0, False),
    (2, "COMPLETE", "baseline:lora", 4, "uniform", False, 0.50, (2, 0.1, 0.2, 1.95), False, 0, None),
    (3, "COMPLETE", "search", 1, "gradnorm", False, 0.60, (2, 0.25, 0.5, 0.5), False, 2, True),
    (4, "COMPLETE", "search", 3, "gradnorm", False, 0.70, (2, 0.75, 1.5, 1.0), False, 1, True),
    (5, "PRUNED", "search", 4, "uniform", True, None, (2, 1, 2, 4.25), True, 0, None),
    (6, "COMPLETE", "search", 2, "uniform", True, 0.58, (2, 0.5, 1, 2.25), False, 0, False),
    (7, "FAIL", "search", 2, "ist", False, None, (2, 0.5, 1, 1), False, 1, None),
    (8, "PRUNED", "search", 2, "ist", False, None, (2, 0.5, 1, 1), False, 1, None),
    (9, "COMPLETE", "search", 3, "ist", False, 0.65, (2, 0.75, 1.5, 2.0), False, 0, True),
]


def _peak(bd):
    return sum(bd.values())


def make_study(
    tmp_path, *, multi=False, storage=None, name="synthetic", model=None, with_baselines=True, trials=TRIALS
):
    """A study of ``trials`` (TRIALS, the table above, by default) with the study attributes `planner tune` records."""
    if model is None:
        from planner.spec.tiny import tiny_spec

        spec = tiny_spec("llama", num_layers=L)
        cfg_path = tmp_path / "tiny-config.json"
        cfg_path.write_text(json.dumps(spec.config.to_dict()))
        model = str(cfg_path)
    kw = {"directions": ["maximize", "minimize"]} if multi else {"direction": "maximize"}
    study = optuna.create_study(study_name=name, storage=storage, **kw)
    for k, v in dict(
        vram_bytes=VRAM,
        model=model,
        model_type="llama",
        num_layers=L,
        layers_attribute="model.layers",
        metric_name="accuracy",
        direction="maximize",
        workload="synthetic",
        search_space={
            "num_layers": L,
            "scorers": ["gradnorm", "ist", "uniform"],
            "seq_len": 32,
            "batch_sizes": [8],
            "lora_ranks": [0, 16],
        },
        device="cpu",
        multi_objective=multi,
    ).items():
        study.set_user_attr(k, v)
    for number, state, kind, active_layers, scorer, emb, metric, bd_gib, gated, lowest, varying in trials:
        if not with_baselines and kind.startswith("baseline"):
            continue
        bd = _bd(*bd_gib)
        peak = _peak(bd)
        params = {
            "active_layers": active_layers,
            "period": 20,
            "scorer": scorer,
            "train_embeddings": emb,
            "train_head": emb,
            "lr": 1e-3,
            "lora_rank": 16 if kind == "baseline:lora" else 0,
        }
        ua = {
            "kind": kind,
            "predicted_peak_bytes": peak,
            "breakdown": bd,
            "fits": peak <= VRAM,
            "gated": gated,
            "reason": "predicted peak over budget" if gated else "",
            "lowest_layer": lowest,
            "trainable_layers": list(range(lowest, lowest + active_layers)),
            "train_seconds": 1.5,
            "importance": [] if varying is None else _importance([0, 10, 20, 30], varying),
        }
        if metric is not None:
            ua["metric"] = metric
        st = TrialState[state]
        values = None
        if st == TrialState.COMPLETE:
            values = [metric, float(peak)] if multi else [metric]
        study.add_trial(create_trial(state=st, values=values, params=params, distributions=DIST, user_attrs=ua))
    return study


def fake_estimator(spec, cfg: TrainConfig):
    """Deterministic stand-in for the cost model: 1 GiB weights + 0.5 GiB per trained layer (+ depth term)."""
    L_ = spec.num_layers
    if cfg.layers == "all":
        trained = L_ if cfg.lora_rank is None else 0.1 * L_
    else:
        trained = cfg.active_layers or 0
    below = 0 if cfg.train_embeddings else cfg.min_depth
    act = (L_ - below) * 0.25
    bd = {
        "weights": GiB,
        "gradients": int(trained * 0.25 * GiB),
        "optimizer": int(trained * 0.5 * GiB),
        "activations": int(act * GiB),
        "transient": 0,
        "overhead": 0,
    }
    return sum(bd.values()), bd


@pytest.fixture
def study(tmp_path):
    return make_study(tmp_path)


def test_trials_are_read_by_contract(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    by = {p.number: p for p in d.trials}
    assert by[0].gated and by[0].metric is None and by[0].kind == "baseline:full"
    assert by[4].metric == pytest.approx(0.70) and by[4].active_layers == 3 and by[4].lowest_layer == 1
    assert by[7].state == "FAIL" and by[7].metric is None
    assert d.counts == {"trials": 10, "complete": 6, "gated": 2, "pruned": 1, "failed": 1, "running": 0}
    assert d.best_trial == 4
    assert d.metric_name == "accuracy" and d.vram_bytes == VRAM and d.num_layers == L


def test_pareto_front(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    # peak GiB / metric: #3 4.0 / 0.60, #4 6.0 / 0.70, #2 5.0 / 0.50, #1 6.5 / 0.55, #6 6.5 / 0.58, #9 7.0 / 0.65
    assert sorted(p.number for p in d.trials if p.pareto) == [3, 4]
    assert pareto_front([], "maximize") == []


def test_bars_use_baseline_trials_and_tuned_plan(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert [b.key for b in d.bars] == ["full", "lora", "qlora", "lisa", "plan"]
    full, lora, qlora, lisa, plan = d.bars
    assert qlora.source == "cost model" and "NF4 + double quant" in qlora.label  # no QLoRA trial in this study
    assert full.source == "trial #0" and full.fits is False and full.peak_bytes == 11 * GiB
    assert plan.trial_number == 4 and plan.breakdown == _bd(2, 0.75, 1.5, 1.0)
    assert all(set(b.breakdown) == set(BREAKDOWN_KEYS) for b in d.bars)


def test_missing_baselines_come_from_the_cost_model(tmp_path):
    study = make_study(tmp_path, with_baselines=False)
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    full = d.bars[0]
    assert full.source == "cost model" and full.key == "full"
    # fake: 1 + 4 layers * 0.75 + 4 * 0.25 activations = 5 GiB
    assert full.peak_bytes == 5 * GiB
    assert d.bars[-1].key == "plan"


def test_savings_table_numbers(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    rows = {r.key: r for r in d.savings}
    full_peak = 11 * GiB  # 2 + 2 + 4 + 2.25 + 0.25 + 0.5
    plan_peak = 6 * GiB  # 2 + 0.75 + 1.5 + 1 + 0.25 + 0.5
    assert rows["plan"].saving_bytes == pytest.approx(full_peak - plan_peak, abs=4)
    assert rows["plan"].saving_pct == pytest.approx(100 * 5 / 11, rel=1e-6)
    assert rows["plan"].delta_vs_lora == pytest.approx(0.70 - 0.50)
    assert rows["plan"].delta_vs_lisa == pytest.approx(0.70 - 0.55)
    assert rows["full"].saving_bytes == 0 and rows["full"].metric is None and rows["full"].delta_vs_lora is None
    assert rows["lora"].delta_vs_lisa == pytest.approx(-0.05)


def test_sweeps_from_cost_model_and_trials(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    g = d.active_layers_sweep
    assert [c.label for c in g.curves] == ["embeddings + head trained", "embeddings + head frozen"]
    assert g.curves[0].x == [1, 2, 3, 4]
    # each extra active layer adds 0.75 GiB in the fake model
    assert [b - a for a, b in zip(g.curves[0].y, g.curves[0].y[1:])] == [int(0.25 * GiB) + int(0.5 * GiB)] * 3
    dep = d.depth_sweep
    assert dep.curves[1].x == [0, 1]  # γ = 3 (the tuned plan): lowest layer 0..L-γ
    frozen = dep.curves[1].y
    assert frozen[0] - frozen[1] == int(0.25 * GiB)  # one fewer layer keeps activations
    assert dep.curves[0].y[0] == dep.curves[0].y[1]  # embeddings trained: depth does not matter
    assert (3, 6 * GiB, 4) in g.points and (1, 6 * GiB, 4) in dep.points


def test_sweeps_without_a_tuned_plan_are_drawn_at_lisas_defaults(tmp_path):
    # no trial trained: the cost-model curves hold LISA's baseline configuration fixed
    study = make_study(tmp_path, trials=[t for t in TRIALS if t[1] != "COMPLETE"])
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert d.best_trial is None
    g = d.active_layers_sweep
    assert [c.label for c in g.curves] == ["embeddings + head trained", "embeddings + head frozen"]
    assert d.depth_sweep.curves[1].x == [0, 1, 2]  # γ = 2 (LISA's default): lowest layer 0..L-γ


def test_sweeps_fall_back_to_trials_when_model_unknown(tmp_path):
    study = make_study(tmp_path, model="no-such-model-preset")
    d = rstudy.study_report_data(study)
    assert d.active_layers_sweep.curves == [] and len(d.active_layers_sweep.points) == 10
    assert "cannot be loaded" in d.active_layers_sweep.note
    # the baselines are trials: bars need no cost model (QLoRA, not trained in this study, has no bar without one)
    assert [b.key for b in d.bars] == ["full", "lora", "lisa", "plan"]


def test_importance_keeps_adaptive_scorers_only(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert [(m.scorer, m.trial_number) for m in d.importance] == [("gradnorm", 4), ("ist", 9)]
    m = d.importance[0]
    assert m.steps == [0, 10, 20, 30] and m.num_layers == L and len(m.weights) == 4 and len(m.weights[0]) == L
    assert m.active[1] == [1, 2]


def test_history_best_so_far(study):
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert [h.number for h in d.history] == [1, 2, 3, 4, 6, 9]
    assert [h.best_so_far for h in d.history] == [None, None, 0.60, 0.70, 0.70, 0.70]


def test_multi_objective_study(tmp_path):
    study = make_study(tmp_path, multi=True)
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert d.best_trial == 4 and d.direction == "maximize"
    assert {p.number: p.metric for p in d.trials if p.metric is not None}[3] == pytest.approx(0.60)
    assert sorted(p.number for p in d.trials if p.pareto) == [3, 4]


def test_empty_study_says_why(tmp_path):
    study = optuna.create_study(study_name="empty")
    d = rstudy.study_report_data(study, use_cost_model=False)
    assert d.bars == [] and d.best_trial is None
    assert {"breakdown", "tradeoff", "history", "importance"} <= set(d.notes)


def _plan(model: str, **kw) -> Plan:
    train = TrainConfig(seq_len=32, active_layers=2, train_embeddings=False, train_head=False)
    base = dict(
        model=model,
        model_type="llama",
        num_layers=L,
        layers_attribute="model.layers",
        active_layers=2,
        period=20,
        scorer="gradnorm",
        train_embeddings=False,
        train_head=False,
        learning_rate=1e-3,
        train=train,
        vram_bytes=VRAM,
        predicted_peak_bytes=3 * GiB,
        breakdown=Breakdown(weights=GiB, gradients=GiB, activations=GiB),
        metric=0.7,
        baselines=[
            {"name": "lora", "predicted_peak_bytes": 2 * GiB, "fits": True, "metric": 0.5},
            {"name": "lisa", "predicted_peak_bytes": 3 * GiB, "fits": True, "metric": 0.6},
        ],
    )
    base.update(kw)
    return consistent_plan(**base)


def _model_file(tmp_path):
    """The tiny llama the plan reports load by path: (its config.json, its spec)."""
    from planner.spec.tiny import tiny_spec

    spec = tiny_spec("llama", num_layers=L)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(spec.config.to_dict()))
    return cfg, spec


def test_plan_report_data_uses_the_cost_model(tmp_path):

    cfg, _ = _model_file(tmp_path)
    d = rplan.plan_report_data(_plan(str(cfg)), name="p", estimator=fake_estimator)
    assert [b.key for b in d.bars] == ["full", "lora", "qlora", "lisa", "plan"]
    assert all(b.source == "cost model" for b in d.bars)
    assert d.notes["tradeoff"] == rdata.NO_STUDY and d.notes["history"] == rdata.NO_STUDY
    rows = {r.key: r for r in d.savings}
    assert rows["plan"].delta_vs_lora == pytest.approx(0.2) and rows["plan"].delta_vs_lisa == pytest.approx(0.1)
    # full: 5 GiB; plan (γ=2, frozen E+H): 1 + 2*0.75 + 4*0.25 = 3.5 GiB
    assert rows["plan"].saving_bytes == int(1.5 * GiB) and rows["plan"].saving_pct == pytest.approx(30.0)
    assert d.active_layers_sweep.curves and d.depth_sweep.curves[0].x == [0, 1, 2]


def test_plan_without_loadable_model_keeps_its_own_breakdown():
    d = rplan.plan_report_data(_plan("no-such-model-preset"), name="p")
    assert [b.key for b in d.bars] == ["plan"] and d.bars[0].peak_bytes == 3 * GiB
    assert "sweeps" in d.notes and "breakdown" in d.notes


def test_load_study_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    make_study(tmp_path, storage=url, name="alpha")
    assert rstudy.load_study("alpha", url).study_name == "alpha"
    with pytest.raises(PlannerError, match=r"'beta'.*studies there: alpha"):
        rstudy.load_study("beta", url)
    with pytest.raises(PlannerError, match="does not exist"):
        rstudy.load_study("alpha", f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(PlannerError, match="--storage must be"):
        rstudy.load_study("alpha", "not a url")


def test_spread_keeps_ends():
    assert costing._spread(1, 4) == [1, 2, 3, 4]
    s = costing._spread(1, 80)
    assert s[0] == 1 and s[-1] == 80 and len(s) <= costing.MAX_SWEEP_POINTS
    assert costing._spread(3, 2) == []


def test_gib():
    assert rdata.gib(512 * MiB) == 0.5 and rdata.gib(None) is None


def test_cost_model_gets_the_study_training_shape(study):
    seen = []

    def recording(spec, cfg):
        seen.append(cfg)
        return fake_estimator(spec, cfg)

    rstudy.study_report_data(study, estimator=recording)
    assert seen and all(c.seq_len == 32 and c.batch_size == 8 for c in seen)
    # the sweeps start from the tuned plan: frozen E+H, full layer weights (lora_rank 0 -> None)
    assert any(c.active_layers == 3 and c.lora_rank is None and c.min_depth == 1 for c in seen)


def test_a_winning_baseline_is_the_tuned_plan(tmp_path):
    study = make_study(tmp_path)
    t = create_trial(
        state=TrialState.COMPLETE,
        values=[0.9],
        params={**study.trials[1].params},
        distributions=DIST,
        user_attrs={**study.trials[1].user_attrs, "metric": 0.9},
    )
    study.add_trial(t)
    d = rstudy.study_report_data(study, estimator=fake_estimator)
    assert d.best_trial == 10 and d.bars[-1].label == "tuned plan (#10)"


def test_plan_deltas_use_the_plan_baselines_when_a_bar_is_missing(tmp_path):

    cfg, _ = _model_file(tmp_path)

    def no_lora(spec, c):
        if c.lora_rank:
            raise PlannerError("the cost model failed (RuntimeError: x)")
        return fake_estimator(spec, c)

    d = rplan.plan_report_data(_plan(str(cfg)), name="p", estimator=no_lora)
    assert [b.key for b in d.bars] == ["full", "lisa", "plan"] and "LoRA: the cost model failed" in d.notes["breakdown"]
    assert "QLoRA: the cost model failed" in d.notes["breakdown"]
    assert {r.key: r for r in d.savings}["plan"].delta_vs_lora == pytest.approx(0.2)


def test_importance_one_row_per_step_and_static_scorers_left_out(tmp_path):
    study = optuna.create_study(study_name="imp", direction="maximize")
    study.set_user_attr("num_layers", L)
    flat = [0.25] * L
    records = {  # scorer -> history: a re-draw at step 0 replaces the first record
        "semantic": [
            {"step": 0, "active": [0], "weights": [0.4, 0.2, 0.2, 0.2]},
            {"step": 0, "active": [1], "weights": flat},
            {"step": 20, "active": [2], "weights": flat},
        ],
        "ist": [
            {"step": 0, "active": [0], "weights": flat},
            {"step": 0, "active": [1], "weights": flat},
            {"step": 10, "active": [2], "weights": [0.3, 0.2, 0.25, 0.25]},
        ],
    }
    for scorer, hist in records.items():
        params = {
            "active_layers": 1,
            "period": 20,
            "scorer": scorer,
            "train_embeddings": True,
            "train_head": True,
            "lr": 1e-3,
            "lora_rank": 0,
        }
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[0.5],
                params=params,
                distributions=DIST,
                user_attrs={"kind": "search", "importance": hist, "fits": True},
            )
        )
    d = rstudy.study_report_data(study, use_cost_model=False)
    assert [(m.scorer, m.steps, m.active) for m in d.importance] == [("ist", [0, 10], [[1], [2]])]


def test_a_study_report_is_about_its_target(tmp_path):
    """A real study of Llama-3-8B at 24 GB (a tiny proxy trains): the bars, curves and budget are the 8B model's."""
    from tune_helpers import tiny_workload

    from planner.recipes import TORCHTUNE_FULL
    from planner.tune import TuneOptions, run_tune

    storage = f"sqlite:///{tmp_path}/s.db"
    # no confirmation runs: what is checked here is the target's shape, not the choice among candidates
    run_tune(
        TuneOptions(
            vram="24GB",
            model="llama-3-8b",
            n_trials=8,
            steps=2,
            eval_every=2,
            storage=storage,
            study="t",
            proxy_device="cpu",
            out=str(tmp_path / "plan.yaml"),
            confirm_seeds=0,
        ),
        workload=tiny_workload(),
        progress=False,
    )
    d = rstudy.study_report_data(rstudy.load_study("t", storage))
    assert "llama-3-8b" in d.title and d.num_layers == 32 and d.vram_bytes == 24 * 10**9 and d.device == "cuda"
    bars = {b.key: b for b in d.bars}
    # full fine-tuning of the 8B model fits 24 GB only in torchtune's single-device form, and trained in it
    full = next(t for t in rstudy.load_study("t", storage).trials if t.user_attrs.get("kind") == "baseline:full")
    assert full.user_attrs["levers"] == {k: v for k, v in TORCHTUNE_FULL.items() if k != "gradient_checkpointing"}
    assert bars["full"].fits is True and bars["full"].peak_bytes <= 24 * 10**9 and bars["full"].metric is not None
    assert bars["plan"].fits is True and bars["plan"].peak_bytes <= 24 * 10**9
    # every baseline fits in some form and searched draws are screened by the gate: what is gated is counted
    assert d.counts["gated"] == sum(p.gated for p in d.trials)
    # the curves are the target's in its shape: γ up to 32 layers, bfloat16 weights (8.03e9 params x 2 B ~ 15 GiB)
    assert max(max(c.x) for c in d.active_layers_sweep.curves) == 32
    assert min(min(c.y) for c in d.active_layers_sweep.curves) > 15 * GiB
    assert any(line.startswith("target: llama-3-8b (32 layers), batch 1 × seq 1024, bfloat16") for line in d.details)


def test_baselines_the_cost_model_prices_are_in_the_form_that_fits(tmp_path):
    """A baseline no trial measured is drawn in the cheapest recipe form within the budget (as `planner tune` trains
    it), named with its levers; over a budget no form meets, in the last form."""

    def ckpt_estimator(spec, cfg):
        total, bd = fake_estimator(spec, cfg)
        if cfg.gradient_checkpointing:  # checkpointing keeps a quarter of the activations here
            bd = {**bd, "activations": bd["activations"] // 4}
        return sum(bd.values()), bd

    cfg, spec = _model_file(tmp_path)
    lora = TrainConfig(seq_len=32, layers="all", train_embeddings=False, train_head=False, lora_rank=16)
    plain, ckpt = (
        ckpt_estimator(spec, lora)[0],
        ckpt_estimator(spec, lora.model_copy(update={"gradient_checkpointing": True}))[0],
    )
    assert ckpt < plain
    between = (plain + ckpt) // 2
    d = rplan.plan_report_data(_plan(str(cfg), vram_bytes=between), name="p", estimator=ckpt_estimator)
    bar = next(b for b in d.bars if b.key == "lora")
    assert bar.peak_bytes == ckpt and bar.label == "LoRA (checkpointing)" and bar.fits
    d = rplan.plan_report_data(_plan(str(cfg), vram_bytes=ckpt - 1), name="p", estimator=ckpt_estimator)
    bar = next(b for b in d.bars if b.key == "lora")
    assert bar.peak_bytes == ckpt and not bar.fits  # LoRA's last form is checkpointing


def test_plan_report_takes_each_baselines_figures_by_name_and_its_recorded_form(tmp_path):
    """A plan whose best is torchtune's full form (paged 8-bit AdamW): its LoRA baseline was trained with the
    target's AdamW, and the study recorded that peak; the report draws that form, and LoRA keeps its own metric
    beside QLoRA's (a name match once gave LoRA QLoRA's figures)."""

    def opt_estimator(spec, cfg):
        total, bd = fake_estimator(spec, cfg)
        if cfg.optimizer != "adamw":  # 8-bit state: a quarter here
            bd = {**bd, "optimizer": bd["optimizer"] // 4}
        return sum(bd.values()), bd

    cfg, spec = _model_file(tmp_path)
    lora = TrainConfig(seq_len=32, layers="all", train_embeddings=False, train_head=False, lora_rank=16)
    adamw_peak = opt_estimator(spec, lora)[0]
    assert opt_estimator(spec, lora.model_copy(update={"optimizer": "paged_adamw8bit"}))[0] != adamw_peak
    train = TrainConfig(seq_len=32, layers="all", optimizer="paged_adamw8bit")
    plan = _plan(
        str(cfg),
        train=train,
        active_layers=L,
        train_embeddings=True,
        train_head=True,
        vram_bytes=100 * GiB,
        baselines=[
            {"name": "lora", "predicted_peak_bytes": adamw_peak, "fits": True, "metric": 0.5},
            {"name": "qlora", "predicted_peak_bytes": GiB, "fits": True, "metric": 0.4},
        ],
    )
    d = rplan.plan_report_data(plan, name="p", estimator=opt_estimator)
    bars = {b.key: b for b in d.bars}
    assert bars["lora"].peak_bytes == adamw_peak and "paged" not in bars["lora"].label
    assert bars["lora"].metric == 0.5 and bars["qlora"].metric == 0.4
