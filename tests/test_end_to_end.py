"""The README's flow on a user's own workload: tune a local model on a JSONL file, export the plan, report it."""

import optuna
import pytest
import yaml
from tune_helpers import write_user_workload

from planner.cli.main import main
from planner.plan import Plan


@pytest.fixture
def user_workload(tmp_path):
    return write_user_workload(tmp_path)


def test_tune_export_report_on_a_local_model_and_jsonl(user_workload, tmp_path, capsys, monkeypatch):
    model_dir, data = user_workload
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    code = main(["tune", "--vram", "24GB", "--model", str(model_dir), "--data", str(data), "--n-trials", "5",
                 "--steps", "4", "--eval-every", "2", "--study", "mine", "--storage", storage, "--device", "cpu",
                 "--scorers", "uniform,gradnorm", "--quiet", "--out", str(tmp_path / "plan.yaml")])
    assert code == 0, capsys.readouterr().err

    plan = Plan.load(tmp_path / "plan.yaml")
    assert plan.model == str(model_dir) and plan.num_layers == 3 and plan.layers_attribute == "model.layers"
    assert plan.metric_name == "accuracy" and plan.scorer in {"uniform", "gradnorm"}
    assert {b.name for b in plan.baselines} == {"lisa", "full", "lora"}
    study = optuna.load_study(study_name="mine", storage=storage)
    assert len(study.trials) == 5
    assert all(t.user_attrs["predicted_peak_bytes"] <= 24 * 10**9 for t in study.trials if t.state.name == "COMPLETE")

    assert main(["export", str(tmp_path / "plan.yaml"), "--to", "axolotl", "--out", str(tmp_path / "ax")]) == 0
    axolotl = yaml.safe_load((tmp_path / "ax" / "axolotl.yaml").read_text())
    assert axolotl["lisa_layers_attribute"] == "model.layers" or "unfrozen_parameters" in axolotl

    assert main(["report", "--study", "mine", "--storage", storage, "--out", str(tmp_path / "rep"), "--device", "cpu"]) == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in html and (tmp_path / "rep" / "report.md").is_file()
