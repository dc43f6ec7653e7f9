"""End-to-end searches on a tiny workload: the budget gate, the trial record, resume, failures, Ctrl-C."""

import math
from dataclasses import replace

import optuna
import pytest

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.plan import BREAKDOWN_KEYS, Plan
from planner.sampling import DivergedError
from planner.tune import InfeasibleBudget, TuneOptions, run_tune
from planner.tune.study.baselines import KINDS, trial_point
from planner.tune.search.gate import BudgetGate
from planner.tune.proxy.mapping import proxy_params
from planner.tune.proxy.train import run_proxy
from planner.tune.storage.backends import open_storage
from planner.tune.study.record import INTERRUPTED
from planner.tune.study.result import NoFinishedTrial, finished
from planner.tune.run import Interrupted, _eval_every, _make_pruner
from planner.tune.target_space import build_space, check_feasible

STEPS = 6


def target_space(wl, target):
    opts = TuneOptions(vram=1, **target_flags(wl, target))
    t, _ = opts.validate_all()
    return t, build_space(t, opts)


def target_flags(wl, target):
    return dict(model=target, seq_len=wl.seq_len, batch_size=8, dtype="float32", device="cpu")


def peaks(wl, target):
    """Predicted peaks (device cpu) of the cheapest and the dearest configuration of the tiny target."""
    t, space = target_space(wl, target)
    gate = BudgetGate(t.spec, 1, device="cpu")
    # the search may add the memory-only levers to any point (planner.tune.search.forms): the smallest is over those too
    walk = ({}, {"optimizer_in_backward": True}, {"optimizer_in_backward": True, "loss_chunks": 8})
    low = min(
        gate.predict(space.train_config(replace(p, levers=tuple(sorted(w.items()))))).peak_bytes
        for p in space.cheapest_points()
        for w in walk
    )
    high = max(
        gate.predict(
            TrainConfig(batch_size=8, seq_len=wl.seq_len, active_layers=wl.spec.num_layers, gradient_checkpointing=c)
        ).peak_bytes
        for c in (False, True)
    )
    return low, high


def options(tmp_path, vram, target, wl, **kw):
    base = dict(
        vram=vram,
        n_trials=10,
        steps=STEPS,
        eval_every=2,
        storage=f"sqlite:///{tmp_path}/s.db",
        study="t",
        out=str(tmp_path / "plan.yaml"),
        proxy_device="cpu",
        confirm_seeds=0,
        **target_flags(wl, target),
    )
    return TuneOptions(**{**base, **kw})


class Recorder:
    """The real proxy trainer, recording which configurations actually trained."""

    def __init__(self, fail=None):
        self.trained = []
        self.fail = fail

    def __call__(self, workload, params, **kw):
        self.trained.append((params, kw["batch_size"]))
        if self.fail is not None:
            self.fail(params, len(self.trained))
        return run_proxy(workload, params, **kw)


def test_no_trial_trains_over_budget(tmp_path, wl, target):
    low, high = peaks(wl, target)
    vram = (low + high) // 2
    rec = Recorder()
    result = run_tune(options(tmp_path, vram, target, wl, n_trials=14), workload=wl, progress=False, proxy=rec)
    study = optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    trials = study.trials
    gated = [t for t in trials if t.user_attrs.get("gated")]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert gated, "a budget between the cheapest and the dearest configuration must gate some trials"
    assert complete
    for t in complete:
        assert t.user_attrs["predicted_peak_bytes"] <= vram and t.user_attrs["fits"] is True
    for t in gated:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["predicted_peak_bytes"] > vram and t.user_attrs["fits"] is False
        assert "exceeds the budget" in t.user_attrs["reason"] and "metric" not in t.user_attrs
    # the proxy trainer saw only configurations that fit
    gate = BudgetGate(wl.spec, vram, device="cpu")
    _, space = target_space(wl, target)
    reused = [t for t in trials if t.user_attrs.get("reused_from") is not None]
    assert len(rec.trained) == len(trials) - len(gated) - len(reused)
    # what trained is the proxy plan of a trial that fits (the same depth: memory-only levers off, the rest equal)
    fitting = [
        proxy_params(trial_point(t, space), target_layers=3, proxy_layers=3)
        for t in trials
        if not t.user_attrs.get("gated")
    ]
    for params, _ in rec.trained:
        assert params in fitting
    for t in trials:
        if not t.user_attrs.get("gated"):
            assert gate.predict(space.train_config(trial_point(t, space))).peak_bytes <= vram
    assert result.plan.predicted_peak_bytes <= vram
    assert result.counts["gated"] == len(gated)


def test_trial_record_contract_and_plan(tmp_path, wl, target):
    _, high = peaks(wl, target)
    result = run_tune(options(tmp_path, high * 2, target, wl, n_trials=6), workload=wl, progress=False)
    study = optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert {
        k: study.user_attrs[k] for k in ("vram_bytes", "metric_name", "direction", "device", "multi_objective")
    } == {
        "vram_bytes": high * 2,
        "metric_name": "eval_loss",
        "direction": "minimize",
        "device": "cpu",
        "multi_objective": False,
    }
    for key in ("model", "model_type", "num_layers", "layers_attribute", "workload"):
        assert key in study.user_attrs
    assert study.user_attrs["layers_attribute"] == "model.layers" and study.user_attrs["num_layers"] == 3
    kinds = [t.user_attrs["kind"] for t in study.trials]
    assert kinds[: len(KINDS)] == list(KINDS) and set(kinds[len(KINDS) :]) == {"search"}
    for t in study.trials:
        a = t.user_attrs
        assert set(t.params) >= {
            "active_layers",
            "min_depth",
            "gradient_checkpointing",
            "period",
            "scorer",
            "train_embeddings",
            "train_head",
            "lr",
        }
        # the proxy is the target's own architecture here: the proxy plan is the target plan
        assert (
            a["proxy_plan"]["active_layers"] == t.params["active_layers"]
            and a["min_depth"] == a["proxy_plan"]["min_depth"]
        )
        assert a["min_depth"] == min(t.params["min_depth"], 3 - t.params["active_layers"])
        assert set(a["breakdown"]) == set(BREAKDOWN_KEYS) and all(isinstance(v, int) for v in a["breakdown"].values())
        assert isinstance(a["predicted_peak_bytes"], int) and a["gated"] is False and a["fits"] is True
        assert a["lowest_layer"] == min(a["trainable_layers"])
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert math.isclose(a["metric"], t.value) and a["train_seconds"] > 0
            assert 0 < len(a["importance"]) <= 50
            assert {"step", "active", "weights"} <= set(a["importance"][0])
            # intermediate evaluations reach the pruner (eval_every=2 of 6 steps)
            assert sorted(t.intermediate_values) == [2, 4, 6]
    assert study.trials[2].params["lora_rank"] == 16  # the LoRA baseline
    plan = Plan.load(tmp_path / "plan.yaml")
    assert plan == result.plan
    assert plan.study_name == "t" and plan.trial_number == result.best_trial_number and plan.vram_bytes == high * 2
    assert {b.name for b in plan.baselines} == {"lisa", "full", "lora", "qlora"}
    best = study.trials[plan.trial_number]
    assert plan.metric == best.user_attrs["metric"] == min(t.value for t in study.trials if t.value is not None)
    assert (
        plan.active_layers == best.params["active_layers"] and plan.train.active_layers == best.params["active_layers"]
    )
    assert plan.breakdown.model_dump() == best.user_attrs["breakdown"]
    assert plan.min_depth == plan.train.min_depth == best.user_attrs["min_depth"]
    assert plan.train.gradient_checkpointing == best.params["gradient_checkpointing"]
    assert plan.proxy.kind == "given" and plan.proxy.learning_rate == best.params["lr"] == plan.learning_rate
    assert plan.model == study.user_attrs["target"]["model"] and study.user_attrs["target_shape"]["batch_size"] == 8


def test_resume_keeps_finished_trials(tmp_path, wl, target):
    _, high = peaks(wl, target)
    run_tune(options(tmp_path, high, target, wl, n_trials=4), workload=wl, progress=False)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    # trials queued at creation (baselines, offered points) beyond the first 4 wait for the resume
    first = [
        (t.number, t.params, t.state)
        for t in optuna.load_study(study_name="t", storage=storage).trials
        if t.state.is_finished()
    ]
    run_tune(options(tmp_path, high, target, wl, n_trials=6), workload=wl, progress=False)
    after = optuna.load_study(study_name="t", storage=storage).trials
    assert len(after) == 6 and [(t.number, t.params, t.state) for t in after[:4]] == first
    # a finished study resumed with the same total trains nothing more
    run_tune(options(tmp_path, high, target, wl, n_trials=6), workload=wl, progress=False)
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 6
    # resuming with another budget is refused
    with pytest.raises(PlannerError, match="resumed with the settings"):
        run_tune(options(tmp_path, high * 3, target, wl, n_trials=7), workload=wl, progress=False)


def test_infeasible_budget_names_the_smallest_that_fits(tmp_path, wl, target):
    low, _ = peaks(wl, target)
    with pytest.raises(InfeasibleBudget, match=f"at least {low} B"):
        run_tune(options(tmp_path, low - 1, target, wl), workload=wl, progress=False)
    _, space = target_space(wl, target)
    check_feasible(space, BudgetGate(wl.spec, low, device="cpu"))  # exactly that budget passes


def test_diverged_and_crashed_trials_fail_and_the_study_goes_on(tmp_path, wl, target):
    _, high = peaks(wl, target)

    def fail(params, n):
        if n == 4:
            raise DivergedError(3, float("nan"))
        if n == 5:
            raise RuntimeError("boom")

    result = run_tune(
        options(tmp_path, high * 2, target, wl, n_trials=7), workload=wl, progress=False, proxy=Recorder(fail)
    )
    trials = optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db")).trials
    assert len(trials) == 7
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [3, 4]
    assert (
        failed[0].user_attrs["reason"].startswith("diverged") and "RuntimeError: boom" in failed[1].user_attrs["reason"]
    )
    assert result.counts["fail"] == 2 and result.counts["complete"] == 5


def test_a_study_whose_every_trial_crashed_says_why(tmp_path, wl, target):
    """No trained trial: the error names the trials' distinct reasons, not just their count."""
    _, high = peaks(wl, target)

    def fail(params, n):
        raise RuntimeError(f"boom {n % 2}")

    rec = Recorder(fail)
    with pytest.raises(NoFinishedTrial) as err:
        run_tune(options(tmp_path, high * 2, target, wl, n_trials=3), workload=wl, progress=False, proxy=rec)
    message = str(err.value)
    assert (
        f"'fail': {len(rec.trained)}" in message
        and message.count("RuntimeError: boom 1") == 1
        and "RuntimeError: boom 0" in message
    )


def test_ctrl_c_stops_cleanly_and_resume_loses_nothing(tmp_path, wl, target):
    _, high = peaks(wl, target)

    def interrupt(params, n):
        if n == 4:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="resume with: planner tune") as err:
        run_tune(
            options(tmp_path, high * 2, target, wl, n_trials=7), workload=wl, progress=False, proxy=Recorder(interrupt)
        )
    assert err.value.exit_code == 130 and "--study t" in str(err.value)
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    before = optuna.load_study(study_name="t", storage=storage).trials
    done = [(t.number, t.params) for t in before if t.state == optuna.trial.TrialState.COMPLETE]
    stopped = [t.number for t in before if t.user_attrs.get("reason") == INTERRUPTED]
    # three proxy runs finished (trials that reused one of them complete too) before the fourth was interrupted
    assert len(stopped) == 1 and len(done) >= 3 and all(n < stopped[0] for n, _ in done)
    run_tune(options(tmp_path, high * 2, target, wl, n_trials=7), workload=wl, progress=False)
    after = optuna.load_study(study_name="t", storage=storage).trials
    assert [(t.number, t.params) for t in after if t.number < stopped[0]] == done
    # the interrupted trial is failed with its reason and not counted: 7 finished trials besides it
    assert [t.user_attrs["reason"] for t in after if t.state == optuna.trial.TrialState.FAIL] == [INTERRUPTED]
    assert sum(finished(t) for t in after) == 7 and len(after) == 8


def test_multi_objective_keeps_a_pareto_front(tmp_path, wl, target):
    low, high = peaks(wl, target)
    result = run_tune(
        options(tmp_path, high, target, wl, n_trials=8, multi_objective=True), workload=wl, progress=False
    )
    study = optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))
    assert len(study.directions) == 2 and study.user_attrs["multi_objective"] is True
    front = study.best_trials
    assert front and result.pareto
    assert {p["trial"] for p in result.pareto} <= {t.number for t in front}
    for t in front:
        assert t.values[1] == t.user_attrs["predicted_peak_bytes"] <= high
    assert result.plan.trial_number in {t.number for t in front}


def test_lora_batch_sizes_hyperband_random_on_a_journal_file(tmp_path, wl, target):
    _, high = peaks(wl, target)
    journal = str(tmp_path / "runs" / "study.log")
    result = run_tune(
        options(
            tmp_path,
            high * 4,
            target,
            wl,
            n_trials=6,
            lora=True,
            batch_sizes="2,4",
            pruner="hyperband",
            sampler="random",
            storage=journal,
        ),
        workload=wl,
        progress=False,
    )
    trials = optuna.load_study(study_name="t", storage=open_storage(journal)).trials
    assert len(trials) == 6
    for t in trials:
        assert t.params["batch_size"] in (2, 4) and t.params["lora_rank"] in (0, 8, 16, 32)
    assert result.plan.train.batch_size == trials[result.plan.trial_number].params["batch_size"]
    rank = trials[result.plan.trial_number].params["lora_rank"]
    assert result.plan.lora_rank == (rank or None) and result.plan.train.lora_rank == (rank or None)


@pytest.mark.parametrize("steps, first, second", [(50, 17, 34), (150, 50, 100), (6, 2, 4)])
def test_the_median_pruner_waits_for_the_second_evaluation(steps, first, second):
    options = TuneOptions(vram="24GB", steps=steps)
    assert _eval_every(options) == first  # three evaluations, the last on the last step (the metric)
    study = optuna.create_study(pruner=_make_pruner(options))
    for _ in range(5):  # five finished trials that learned
        trial = study.ask()
        trial.report(0.1, first)
        trial.report(0.05, second)
        study.tell(trial, 0.05)
    behind = study.ask()
    behind.report(9.0, first)
    assert not behind.should_prune()  # far behind at the first evaluation: never pruned there
    behind.report(9.0, second)
    assert behind.should_prune()  # at the second it is
