"""`planner tune` progress: a bar on a terminal, one flushed line per finished trial elsewhere (| tee log)."""

import io

import optuna
from optuna.trial import TrialState, create_trial
from rich.console import Console

from planner.tune.study.progress import TrialProgress

PARAMS = {
    "active_layers": 2,
    "period": 20,
    "scorer": "uniform",
    "train_embeddings": True,
    "train_head": True,
    "lr": 1e-3,
}
DISTS = {
    "active_layers": optuna.distributions.IntDistribution(1, 4),
    "period": optuna.distributions.CategoricalDistribution([5, 20]),
    "scorer": optuna.distributions.CategoricalDistribution(["uniform", "ist"]),
    "train_embeddings": optuna.distributions.CategoricalDistribution([True, False]),
    "train_head": optuna.distributions.CategoricalDistribution([True, False]),
    "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
}


def _trials():
    base = {"predicted_peak_bytes": 3 * 1024**3, "fits": True}
    return [
        create_trial(
            state=TrialState.COMPLETE,
            value=0.5,
            params=PARAMS,
            distributions=DISTS,
            user_attrs={**base, "kind": "baseline:lisa", "metric": 0.5},
        ),
        create_trial(
            state=TrialState.PRUNED,
            params=PARAMS,
            distributions=DISTS,
            user_attrs={**base, "fits": False, "gated": True, "predicted_peak_bytes": 30 * 1024**3},
        ),
        create_trial(
            state=TrialState.COMPLETE,
            value=0.75,
            params={**PARAMS, "active_layers": 3},
            distributions=DISTS,
            user_attrs={**base, "kind": "search", "metric": 0.75},
        ),
        create_trial(
            state=TrialState.FAIL,
            params=PARAMS,
            distributions=DISTS,
            user_attrs={**base, "reason": "diverged: loss is nan"},
        ),
        create_trial(state=TrialState.PRUNED, params=PARAMS, distributions=DISTS, user_attrs=base),
    ]


def _run(console):
    study = optuna.create_study(direction="maximize")
    bar = TrialProgress(5, 0, metric_name="accuracy", direction="maximize", console=console)
    with bar:
        for i, trial in enumerate(_trials()):
            study.add_trial(trial)
            bar(study, study.trials[i])
    return bar


def test_one_line_per_finished_trial_off_a_terminal():
    out = io.StringIO()
    _run(Console(file=out, force_terminal=False, width=200))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and all(line.startswith(f"tune: trial {i}/5 (#{i - 1}, ") for i, line in enumerate(lines, 1))
    assert (
        "(#0, baseline:lisa) complete: accuracy 0.5000 | γ=2 K=20 uniform, peak 3.00 GiB | best accuracy 0.5000 | gated 0 | failed 0"
        in lines[0]
    )
    assert "gated (over budget, not trained)" in lines[1] and "gated 1" in lines[1]
    assert "complete: accuracy 0.7500 | γ=3" in lines[2] and "best accuracy 0.7500" in lines[2]
    assert "failed: diverged: loss is nan" in lines[3] and "failed 1" in lines[3]
    assert "pruned early" in lines[4] and "best accuracy 0.7500 | gated 1 | failed 1" in lines[4]


def test_a_terminal_gets_the_bar_and_no_trial_lines():
    out = io.StringIO()
    _run(Console(file=out, force_terminal=True, width=200))
    text = out.getvalue()
    assert "tune: trial" not in text and "5/5" in text and "best accuracy 0.75" in text


def test_quiet_prints_nothing():
    out = io.StringIO()
    study = optuna.create_study(direction="maximize")
    bar = TrialProgress(1, 0, metric_name="accuracy", direction="maximize", console=Console(file=out), enabled=False)
    with bar:
        study.add_trial(_trials()[0])
        bar(study, study.trials[0])
    assert out.getvalue() == ""
