"""A score with signal, or `planner tune` says it has none: the tuned plan against the runner-up and the baselines."""

import math
import zlib

import optuna
import pytest
import yaml

from tune_helpers import tune_options

from planner.plan import Plan
from planner.tune import run_tune
from planner.tune.study.verdict import Confirmed, signal_verdict
from planner.tune.proxy.train import ProxyResult
from planner.tune.study.summary import confirmation_lines, exit_code


def _run(metrics, number, kind="search"):
    trial = optuna.trial.create_trial(
        value=0.0, params={}, distributions={}, user_attrs={"predicted_peak_bytes": 100, "kind": kind}
    )
    trial.number = number
    return Confirmed(trial, list(metrics), 0)


def test_the_verdict_by_hand():
    best = _run([0.50, 0.52, 0.54], 1)  # eval loss: lower is better
    runner = _run([0.53, 0.55, 0.57], 2)  # 0.03 behind; 2·SE = 2·sqrt(2·0.02²/3) = 0.0327
    lora = _run([0.55, 0.57, 0.59], 3, "baseline:lora")  # 0.05 behind, also 2·SE 0.0327
    assert 2 * math.sqrt(2 * 0.02**2 / 3) == pytest.approx(0.0327, abs=1e-4)
    separated, line = signal_verdict([best, runner, lora], best, "minimize")
    assert separated is True and "lora by 0.0500 > 0.0327" in line and "trial 2" not in line
    separated, line = signal_verdict([best, runner], best, "minimize")  # the runner-up alone: within the noise
    assert separated is False and line.startswith("no signal: the tuned plan (trial 1) is not ahead of trial 2")
    assert "by +0.0300, 2 standard errors 0.0327" in line
    # a baseline far behind but noisy is not separated either
    noisy = _run([0.40, 0.60, 0.80], 4, "baseline:full")
    assert signal_verdict([best, runner, noisy], best, "minimize")[0] is False
    # nothing to compare, or no noise measured: no verdict either way
    assert signal_verdict([best], best, "minimize")[0] is None
    assert signal_verdict([_run([0.5], 1), _run([0.9], 2)], _run([0.5], 1), "minimize")[0] is None


def _options(tmp_path, target, wl, **kw):
    base = dict(n_trials=8, steps=4, eval_every=2, study="v", confirm_seeds=3, confirm_top=2)
    return tune_options(tmp_path, target, wl, **{**base, **kw})


def _noise(seed: int) -> float:
    return (zlib.crc32(str(seed).encode()) % 1000) / 1000  # 0 .. 1: the seed's share of the score


def _scored(plan_spread: float):
    """A proxy whose score is seed noise (0.1 wide) plus ``plan_spread`` times a function of the plan."""

    def proxy(workload, params, *, steps, seed, on_eval=None, **kw):
        by_plan = (zlib.crc32(repr(sorted(vars(params).items())).encode()) % 1000) / 1000
        metric = 1.0 + plan_spread * by_plan + 0.1 * _noise(seed)
        if on_eval is not None:
            on_eval(steps, metric)
        return ProxyResult(metric=metric, history=[], train_seconds=0.0, evaluations=[(steps, metric)])

    return proxy


def test_no_signal_writes_the_verdict_and_exits_1(tmp_path, wl, target, monkeypatch, capsys):
    import planner.tune as tune_pkg
    from planner.cli.main import main

    real = tune_pkg.run_tune
    monkeypatch.setattr(
        tune_pkg, "run_tune", lambda options, **kw: real(options, **kw, workload=wl, proxy=_scored(1e-4))
    )
    argv = [
        "tune",
        "--vram",
        "1GB",
        "--model",
        target,
        "--n-trials",
        "8",
        "--steps",
        "4",
        "--seq-len",
        str(wl.seq_len),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--proxy-device",
        "cpu",
        "--storage",
        f"sqlite:///{tmp_path}/s.db",
        "--study",
        "v",
        "--out",
        str(tmp_path / "plan.yaml"),
        "--quiet",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("no signal: ")]
    assert len(lines) == 1 and "cannot tell these plans apart" in lines[0]
    plan = Plan.load(tmp_path / "plan.yaml")  # written all the same, with its verdict
    assert plan.confirmation.separated is False and plan.confirmation.verdict == lines[0]
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["confirmation"]["separated"] is False


def test_a_plan_ahead_beyond_the_noise_exits_0(tmp_path, wl, target):
    result = run_tune(_options(tmp_path, target, wl), workload=wl, progress=False, proxy=_scored(10.0))
    conf = result.plan.confirmation
    assert conf.separated is True and conf.verdict.startswith("signal: the tuned plan")
    assert exit_code(result.plan) == 0 and conf.verdict in confirmation_lines(result.plan)
    # the record agrees with the confirmed means it was drawn from
    means = sorted(c.mean for c in conf.candidates)
    assert result.plan.metric == means[0]


def _baseline_trial(metrics, number, kind, peak=100):
    trial = optuna.trial.create_trial(
        value=0.0,
        params={"lr": 1e-3},
        distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
        user_attrs={"predicted_peak_bytes": peak, "kind": kind, "fits": True, "metric": sum(metrics) / len(metrics)},
    )
    trial.number = number
    return trial


def test_a_baseline_that_is_the_tuned_plan_is_held_against_the_best_searched_plan():
    from planner.tune.study.verdict import margins

    full = _baseline_trial([0.20, 0.24, 0.28], 1, "baseline:full")
    searched = _baseline_trial([0.45, 0.50, 0.55], 2, "search", peak=90)
    runs = [Confirmed(full, [0.20, 0.24, 0.28], 0), Confirmed(searched, [0.45, 0.50, 0.55], 0)]
    (m,) = margins(runs, runs[0], [full, searched], "minimize")
    # not the tuned plan against itself (a margin of 0): the best searched plan against it, 0.26 behind;
    # 2·SE = 2·sqrt(0.04²/3 + 0.05²/3) = 0.0739
    assert m.versus == "trial 2" and m.margin == pytest.approx(-0.26) and m.noise == pytest.approx(0.0739, abs=1e-4)
    assert m.verdict == "worse beyond the seed noise"
    (alone,) = margins(runs[:1], runs[0], [full], "minimize")
    assert alone.margin is None and "is the tuned plan" in alone.verdict
