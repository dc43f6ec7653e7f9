"""A study whose trials cannot be told apart (every metric equal) names no best plan and exits 1."""

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from tune_helpers import tiny_workload, write_target_config

from planner.cli.main import main
from planner.tune import TuneOptions, run_tune
from planner.tune.proxy.train import run_proxy
from planner.tune.study.result import NoSignal, check_signal


def _trial(metric):
    return create_trial(state=TrialState.COMPLETE, value=metric, user_attrs={"metric": metric, "fits": True})


@pytest.mark.parametrize(
    "metrics, silent",
    [
        ([0.0, 0.0, 0.0], False),  # nothing learned anywhere
        ([0.5, 0.5], False),  # all equal
        ([0.0], False),  # a single trial that learned nothing
        ([0.5], True),  # a single trial with a result: nothing to compare, nothing contradicts it
        ([0.0, 0.125], True),
        ([2.31, 2.30, 2.31], True),
    ],
)
def test_check_signal(metrics, silent):
    trials = [_trial(m) for m in metrics]
    if silent:
        check_signal(trials, "accuracy", "s")
        return
    with pytest.raises(NoSignal) as err:
        check_signal(trials, "accuracy", "s")
    assert err.value.exit_code == 1
    assert f"all {len(metrics)} of study 's' scored {metrics[0]:.4f}" in str(err.value)


def test_tune_with_all_trials_equal_exits_1_and_writes_no_plan(tmp_path, capsys, monkeypatch):
    wl = tiny_workload()
    target = write_target_config(wl, tmp_path / "target" / "config.json")

    def flat(workload, params, **kw):  # real training, then the metric every trial reports
        return dataclasses.replace(run_proxy(workload, params, **kw), metric=0.0)

    opts = TuneOptions(
        vram="24GB",
        model=target,
        seq_len=wl.seq_len,
        batch_size=8,
        dtype="float32",
        device="cpu",
        n_trials=4,
        steps=2,
        eval_every=1,
        storage=f"sqlite:///{tmp_path}/s.db",
        study="flat",
        out=str(tmp_path / "plan.yaml"),
        proxy_device="cpu",
        pruner="none",
    )
    with pytest.raises(NoSignal) as err:
        run_tune(opts, workload=wl, progress=False, proxy=flat)
    assert "all 4 of study 'flat' scored 0.0000" in str(err.value) and "no plan written" in str(err.value)
    assert not (tmp_path / "plan.yaml").exists()
    trials = optuna.load_study(study_name="flat", storage=f"sqlite:///{tmp_path}/s.db").trials
    assert [t.user_attrs["metric"] for t in trials if "metric" in t.user_attrs] == [0.0] * 4  # the study is kept

    # the command line: exit code 1, one line
    import planner.tune as tune_pkg

    monkeypatch.setattr(tune_pkg, "run_tune", lambda *a, **k: (_ for _ in ()).throw(err.value))
    assert main(["tune", "--vram", "24GB"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
