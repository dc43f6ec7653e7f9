"""The README's flow on a user's own model, measured: tune it as the target (it also trains as its own proxy),
under a budget set between two measured peaks, then export and report the plan.

The truth is measured, not predicted: ``measure_training_peak`` runs real training steps on CPU and
reads live tensor bytes. Full fine-tuning is measured above the budget, the cheapest plan below it;
the study must gate the first, and the plan it writes must measure within the budget.
"""

import optuna
import pytest
import torch
import yaml
from tune_helpers import write_user_workload

from planner.cli.main import main
from planner.config import TrainConfig
from planner.cost import measure_training_peak
from planner.plan import Plan
from planner.spec import build_model, load_spec

SEQ, BATCH = 32, 2


@pytest.fixture
def user_workload(tmp_path):
    """A local model directory, and plain text to fine-tune it on (metric: held-out eval loss)."""
    return write_user_workload(tmp_path, text=True)


def measured_peak(spec, cfg: TrainConfig, layers=None) -> int:
    """Peak live tensor bytes of real training steps of ``cfg`` on CPU (random batch of the target's shape)."""
    torch.manual_seed(0)
    batch = torch.randint(3, spec.vocab_size, (cfg.batch_size, cfg.seq_len))
    return measure_training_peak(build_model(spec, seed=0), cfg, batch, layers=layers)


def test_tune_export_report_a_local_target_under_a_measured_budget(user_workload, tmp_path, capsys, monkeypatch):
    model_dir, data = user_workload
    monkeypatch.chdir(tmp_path)
    spec = load_spec(model_dir)
    shape = dict(batch_size=BATCH, seq_len=SEQ, dtype="float32")
    full = measured_peak(spec, TrainConfig(**shape, layers="all"))
    low = measured_peak(
        spec, TrainConfig(**shape, layers=[spec.num_layers - 1], train_embeddings=False, train_head=False)
    )
    assert low < full
    vram = (low + full) // 2

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    capsys.readouterr()
    code = main(
        [
            "tune",
            "--vram",
            str(vram) + "B",
            "--model",
            model_dir,
            "--seq-len",
            str(SEQ),
            "--batch-size",
            str(BATCH),
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--proxy",
            "target",
            "--proxy-device",
            "cpu",
            "--data",
            data,
            "--n-trials",
            "8",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--study",
            "mine",
            "--storage",
            storage,
            "--scorers",
            "uniform,gradnorm",
            "--quiet",
            "--out",
            str(tmp_path / "plan.yaml"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"target: {model_dir} (3 layers; batch {BATCH} × seq {SEQ}, float32")
    assert f"proxy: {model_dir} on cpu" in out.splitlines()[0]
    header = [line for line in out.splitlines() if line.startswith("┃")]
    rows = [line for line in out.splitlines() if line.startswith("│")]
    # captured (not a terminal): the summary table is not wrapped to 80 columns: one header line, and no row
    # continues on a line with an empty first cell
    assert len(header) == 1 and rows and all(line.split("│")[1].strip() for line in rows), "\n".join(header + rows)

    study = optuna.load_study(study_name="mine", storage=storage)
    trials = {t.user_attrs["kind"]: t for t in reversed(study.trials)}
    # full fine-tuning measured over the budget: the gate must not have trained it
    assert trials["baseline:full"].user_attrs["gated"] is True and "metric" not in trials["baseline:full"].user_attrs
    assert "does not fit" in out
    # the target trained as its own proxy, in its own shape: same depth, the target's batch
    for t in study.trials:
        if t.user_attrs.get("metric") is not None:
            assert t.user_attrs["proxy_plan"] == {
                "active_layers": t.params["active_layers"],
                "min_depth": t.user_attrs["min_depth"],
                "batch_size": BATCH,
            }

    plan = Plan.load(tmp_path / "plan.yaml")
    assert (
        plan.model == model_dir and plan.num_layers == 3 and plan.train.seq_len == SEQ and plan.proxy.kind == "target"
    )
    assert plan.learning_rate == plan.proxy.learning_rate  # the target's own width: the rate carries over
    # the written plan, measured at its worst-case draw, fits the budget
    best = study.trials[plan.trial_number]
    assert (
        measured_peak(
            spec, plan.train.model_copy(update={"active_layers": None}), layers=best.user_attrs["trainable_layers"]
        )
        <= vram
    )

    assert main(["export", str(tmp_path / "plan.yaml"), "--to", "axolotl", "--out", str(tmp_path / "ax")]) == 0
    axolotl = yaml.safe_load((tmp_path / "ax" / "axolotl.yaml").read_text())
    assert axolotl["base_model"] == model_dir and axolotl["sequence_len"] == SEQ

    assert (
        main(["report", "--study", "mine", "--storage", storage, "--out", str(tmp_path / "rep"), "--device", "cpu"])
        == 0
    )
    md = (tmp_path / "rep" / "report.md").read_text()
    assert model_dir in md and (tmp_path / "rep" / "report.html").is_file()
