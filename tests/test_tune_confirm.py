"""Confirmation runs and fair baselines: re-trained candidates, mean ± std, margins against the seed noise."""

import math
import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from tune_helpers import tune_options

from planner.errors import PlannerError
from planner.plan import Plan
from planner.tune import run_tune
from planner.tune.study.baselines import KINDS, LR_SWEEP_FACTORS, best_of_kind
from planner.tune.study.confirm import confirm_seed, select_candidates
from planner.tune.study.verdict import BEYOND, WITHIN, WORSE, Confirmed, margin, margins
from planner.tune.proxy.train import run_proxy
from planner.tune.study.kinds import SEARCH, BadTrialKind, Confirm, parse_kind
from planner.tune.study.record import is_confirm, is_sweep
from planner.tune.search.space import DEFAULT_LR
from planner.tune.storage.backends import open_storage

STEPS = 6


def options(tmp_path, target, wl, **kw):
    base = dict(n_trials=12, steps=STEPS, eval_every=2, study="t", confirm_seeds=2, confirm_top=2)
    return tune_options(tmp_path, target, wl, **{**base, **kw})


def load(tmp_path):
    return optuna.load_study(study_name="t", storage=open_storage(f"sqlite:///{tmp_path}/s.db"))


class Recorder:
    """The real proxy trainer, recording each run's seed."""

    def __init__(self):
        self.runs = []

    def __call__(self, workload, params, **kw):
        self.runs.append((params, kw["seed"]))
        return run_proxy(workload, params, **kw)


@pytest.fixture(scope="module")
def tuned(wl, target, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("confirm")
    rec = Recorder()
    result = run_tune(options(tmp, target, wl), workload=wl, progress=False, proxy=rec)
    return tmp, result, rec


def test_seeds_and_kinds():
    kind = parse_kind("confirm:12:3")
    assert kind == Confirm(12, 3) and (kind.trial, kind.seed) == (12, 3) and parse_kind("search") == SEARCH
    with pytest.raises(BadTrialKind):
        parse_kind("confirm:x")
    seeds = [confirm_seed(0, i) for i in range(5)]
    assert len(set(seeds)) == 5 and 0 not in seeds and seeds == [confirm_seed(0, i) for i in range(5)]
    assert confirm_seed(1, 0) != confirm_seed(0, 0)


def _run(metrics, peak=100, number=0):
    trial = optuna.trial.create_trial(
        value=0.0, params={}, distributions={}, user_attrs={"predicted_peak_bytes": peak, "kind": "search"}
    )
    trial.number = number
    return Confirmed(trial, list(metrics), 0)


def test_margin_against_welch_standard_error_by_hand():
    # the module docstring's example: means 0.80 and 0.74, stds 0.03 and 0.05 over 3 seeds
    a, b = _run([0.77, 0.80, 0.83]), _run([0.69, 0.74, 0.79])
    diff, noise, verdict = margin(a, b, "maximize")
    assert diff == pytest.approx(0.06) and noise == pytest.approx(2 * math.sqrt(0.03**2 / 3 + 0.05**2 / 3))
    assert noise == pytest.approx(0.0673, abs=1e-4) and verdict == WITHIN
    far = _run([0.90, 0.91, 0.92])
    assert margin(far, b, "maximize")[2] == BEYOND and margin(b, far, "maximize")[2] == WORSE
    # eval loss: lower is better, so the lower mean wins
    assert margin(b, far, "minimize")[2] == BEYOND and margin(b, far, "minimize")[0] == pytest.approx(0.17)


def _frozen(number, kind, metric, peak, lr=1e-3, fits=True, state=TrialState.COMPLETE):
    t = optuna.trial.create_trial(
        state=state,
        value=metric if state == TrialState.COMPLETE else None,
        params={"lr": lr, "active_layers": 1},
        distributions={"lr": FloatDistribution(1e-5, 1.0, log=True), "active_layers": CategoricalDistribution([1])},
        user_attrs={"kind": kind, "metric": metric, "predicted_peak_bytes": peak, "fits": fits},
    )
    t.number = number
    return t


def test_a_baseline_is_compared_at_its_best_learning_rate_and_at_no_more_memory():
    lisa = [
        _frozen(0, "baseline:lisa", 0.50, 300, lr=1e-3),
        _frozen(1, "baseline:lisa", 0.70, 300, lr=3e-4),
        _frozen(2, "baseline:lisa", 0.10, 300, lr=3e-3),
    ]
    lora = _frozen(3, "baseline:lora", 0.60, 150, lr=5e-3)
    full = _frozen(4, "baseline:full", None, 900, fits=False, state=TrialState.PRUNED)
    tuned, cheap = _frozen(5, "search", 0.90, 200), _frozen(6, "search", 0.80, 120)
    trials = lisa + [lora, full, tuned, cheap]
    assert best_of_kind(trials, "baseline:lisa", "maximize").number == 1
    assert best_of_kind(trials, "baseline:lisa", "minimize").number == 2
    runs = [
        Confirmed(lisa[1], [0.70, 0.72, 0.68], 0),
        Confirmed(lora, [0.60, 0.61, 0.59], 0),
        Confirmed(tuned, [0.90, 0.91, 0.89], 0),
        Confirmed(cheap, [0.80, 0.81, 0.79], 0),
    ]
    out = {m.baseline: m for m in margins(runs, runs[2], trials, "maximize")}
    assert out["full"].fits is False and out["full"].margin is None
    # the tuned plan (200 B) is cheaper than LISA (300 B): compared itself
    assert (
        out["lisa"].versus == "trial 5" and out["lisa"].margin == pytest.approx(0.20) and out["lisa"].verdict == BEYOND
    )
    # LoRA needs 150 B: the best confirmed plan within 150 B is trial 6 (120 B)
    assert out["lora"].versus == "trial 6" and out["lora"].versus_peak_bytes == 120
    assert out["lora"].margin == pytest.approx(0.20)
    # without a searched plan within LISA's memory the tuned plan is compared, and the verdict says so;
    # another baseline (LoRA, 150 B) is never the one compared
    lisa_low = [_frozen(0, "baseline:lisa", 0.70, 140)]
    out = {
        m.baseline: m
        for m in margins(
            [Confirmed(lisa_low[0], [0.70, 0.72, 0.68], 0)] + runs[1:3], runs[2], lisa_low + [lora, tuned], "maximize"
        )
    }
    assert out["lisa"].versus == "trial 5" and "at a higher predicted peak" in out["lisa"].verdict


def _searched(number, metric, peak, key, state=TrialState.COMPLETE):
    t = _frozen(number, "search", metric, peak, state=state)
    t.user_attrs["proxy_key"] = key
    return t


def test_candidates_are_the_best_proxy_runs_and_each_baselines_best():
    trials = [
        _frozen(0, "baseline:lisa", 0.50, 300),
        _frozen(1, "baseline:lisa", 0.40, 300, lr=3e-4),
        _frozen(2, "baseline:full", None, 900, fits=False, state=TrialState.PRUNED),
        _searched(3, 0.30, 200, "a"),
        _searched(4, 0.30, 100, "b"),
        _searched(5, 0.30, 100, "b"),  # the proxy run of trial 4, reused
        _searched(6, None, 100, "e", state=TrialState.PRUNED),
        _searched(7, 0.35, 100, "c"),
        _frozen(8, "baseline:lora", 0.60, 150),
    ]
    nan = _searched(9, 0.0, 100, "d")
    nan.user_attrs["metric"] = float("nan")  # a diverged proxy run
    trials.append(nan)
    # lower is better: 4 before 3 (the same loss at a lower predicted peak), 5 is 4's run; LISA at its lower loss
    assert [t.number for t in select_candidates(trials, "minimize", 2)] == [4, 3, 1, 8]
    assert [t.number for t in select_candidates(trials, "minimize", 1)] == [4, 1, 8]
    # higher is better: 7, then 4 (as 3, at a lower peak); LISA at its higher accuracy
    assert [t.number for t in select_candidates(trials, "maximize", 2)] == [7, 4, 0, 8]


def test_confirmation_runs_are_trials_and_the_plan_is_the_best_mean(tuned, wl):
    tmp, result, rec = tuned
    study = load(tmp)
    trials = study.trials
    confirms = [t for t in trials if is_confirm(t)]
    others = [t for t in trials if not is_confirm(t)]
    # --n-trials counts the search and the baselines at their default rates; sweeps and confirmations come on top
    baselines = [t for t in others if t.user_attrs["kind"] in KINDS]
    assert len(baselines) == len(KINDS) * len(LR_SWEEP_FACTORS) and sum(is_sweep(t) for t in trials) == 8
    assert len([t for t in others if not is_sweep(t)]) == 12 and all(t.state.is_finished() for t in trials)
    assert [t.user_attrs["kind"] for t in trials[:4]] == list(KINDS)
    assert all(t.number > 11 for t in trials if is_sweep(t))  # after the search
    lisa_lrs = sorted(t.params["lr"] for t in baselines if t.user_attrs["kind"] == "baseline:lisa")
    assert lisa_lrs == pytest.approx(sorted(DEFAULT_LR * f for f in LR_SWEEP_FACTORS))

    # candidates: the 2 best searched proxy runs and every baseline at its best rate, 2 seeds each (eval loss: lower
    # is better); the selection itself on a study built by hand: test_candidates_*
    sources = {parse_kind(t.user_attrs["kind"]).trial for t in confirms}
    assert len(confirms) == 2 * len(sources)
    trained = [t for t in others if t.state == TrialState.COMPLETE and t.user_attrs["fits"] is True]
    chosen = [trials[n] for n in sources if trials[n].user_attrs["kind"] == "search"]
    assert len(chosen) == 2 and len({t.user_attrs["proxy_key"] for t in chosen}) == 2
    assert {t.number for t in chosen} <= {t.number for t in trained}
    worst = max((t.user_attrs["metric"], t.user_attrs["predicted_peak_bytes"]) for t in chosen)
    for t in trained:  # no other proxy run of the search is better than the worse one chosen
        if t.user_attrs["kind"] == "search" and t.user_attrs["proxy_key"] not in {
            c.user_attrs["proxy_key"] for c in chosen
        }:
            assert (t.user_attrs["metric"], t.user_attrs["predicted_peak_bytes"]) >= worst, t.number
    for kind in KINDS:  # each baseline once, at its lowest eval loss among its learning rates
        of_kind = [t for t in trained if t.user_attrs["kind"] == kind]
        picked = [trials[n] for n in sources if trials[n].user_attrs["kind"] == kind]
        assert len(picked) == (1 if of_kind else 0), kind
        assert not of_kind or picked[0].user_attrs["metric"] == min(t.user_attrs["metric"] for t in of_kind)
    for t in confirms:
        src, i = parse_kind(t.user_attrs["kind"]).trial, parse_kind(t.user_attrs["kind"]).seed
        assert t.params == trials[src].params and t.user_attrs["confirm_seed"] == i
        assert t.intermediate_values == {}  # never seen by the pruner
    # each confirmation run trained with its documented seed, never the search's own
    seeds = [seed for _, seed in rec.runs[-len(confirms) :]]
    assert sorted(set(seeds)) == sorted({confirm_seed(0, 0), confirm_seed(0, 1)})

    plan = Plan.load(tmp / "plan.yaml")
    conf = plan.confirmation
    assert conf is not None and conf.seeds == [confirm_seed(0, 0), confirm_seed(0, 1)] and conf.steps == STEPS
    by_source = {}
    for t in confirms:
        kind = parse_kind(t.user_attrs["kind"])
        by_source.setdefault(kind.trial, {})[kind.seed] = t.value
    for c in conf.candidates:
        values = [by_source[c.trial_number][i] for i in range(2)]
        assert c.metrics == values and c.mean == pytest.approx(statistics.fmean(values))
        assert c.std == pytest.approx(statistics.stdev(values))
    best = min(conf.candidates, key=lambda c: c.mean)
    assert plan.trial_number == best.trial_number and plan.metric == pytest.approx(best.mean)
    assert {m.baseline for m in conf.margins} == {"lisa", "full", "lora", "qlora"}
    assert result.counts["confirmation"] == len(confirms)
    tuned_row = result.rows[0]
    assert tuned_row.seeds == 2 and tuned_row.std == pytest.approx(best.std)


def test_a_confirmation_seed_is_reproduced_by_an_independent_run(tuned, wl):
    tmp, result, _ = tuned
    study = load(tmp)
    t = next(t for t in study.trials if t.user_attrs.get("kind") == f"confirm:{result.best_trial_number}:1")
    from planner.tune.search.space import TrialParams

    p = study.trials[result.best_trial_number].params
    params = TrialParams(
        p["active_layers"],
        p["period"],
        p["scorer"],
        p["train_embeddings"],
        p["train_head"],
        p["lr"],
        p.get("lora_rank"),
        None,
        min(p["min_depth"], 3 - p["active_layers"]),
        False,
    )
    again = run_proxy(wl, params, batch_size=8, steps=STEPS, eval_every=2, seed=confirm_seed(0, 1))
    assert again.metric == pytest.approx(t.value, rel=1e-6)


def test_resume_confirms_only_what_is_missing(tuned, wl, target):
    tmp, _, _ = tuned
    before = len([t for t in load(tmp).trials if is_confirm(t)])
    run_tune(options(tmp, target, wl), workload=wl, progress=False)
    assert len([t for t in load(tmp).trials if is_confirm(t)]) == before
    run_tune(options(tmp, target, wl, confirm_seeds=3), workload=wl, progress=False)
    confirms = [t for t in load(tmp).trials if is_confirm(t)]
    assert len(confirms) == before * 3 // 2 and {parse_kind(t.user_attrs["kind"]).seed for t in confirms} == {0, 1, 2}
    assert len(Plan.load(tmp / "plan.yaml").confirmation.seeds) == 3


def test_no_confirmation_and_bad_flags(tmp_path, wl, target):
    run_tune(options(tmp_path, target, wl, n_trials=4, confirm_seeds=0, baselines=False), workload=wl, progress=False)
    assert not any(is_confirm(t) for t in load(tmp_path).trials)
    assert Plan.load(tmp_path / "plan.yaml").confirmation is None
    with pytest.raises(PlannerError, match="--confirm-seeds >= 0"):
        options(tmp_path, target, wl, confirm_seeds=-1).validate_all()


def test_the_report_names_the_confirmed_plan_and_its_margins(tuned):
    from planner.report.study import study_report_data

    tmp, result, _ = tuned
    data = study_report_data(load(tmp), use_cost_model=False)
    assert data.best_trial == result.best_trial_number
    conf = [line for line in data.details if line.startswith("confirmation (")]
    kind = load(tmp).trials[result.best_trial_number].user_attrs["kind"]
    name = f"trial {result.best_trial_number}" if kind == "search" else kind.split(":", 1)[1]
    assert len(conf) == 1 and f"{name} (tuned plan)" in conf[0]
    assert sorted(line.split(" ", 2)[1] for line in data.details if line.startswith("vs ")) == [
        "full",
        "lisa",
        "lora",
        "qlora",
    ]
    # a baseline's bar is its best learning rate, as in the plan
    lisa = next(b for b in data.bars if b.key == "lisa")
    assert lisa.trial_number == best_of_kind(load(tmp).trials, "baseline:lisa", "minimize").number
