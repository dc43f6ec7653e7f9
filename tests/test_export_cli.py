"""`planner export`: files written, losses printed, --strict, and one-line errors with exit code 2."""

import os
import re

import pytest

from planner.cli.main import main
from planner.config import TrainConfig
from plan_factory import make_plan


@pytest.fixture
def plan_file(tmp_path):
    return make_plan(scorer="ist").save(tmp_path / "plan.yaml")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_prints_files_and_losses(plan_file, tmp_path, capsys):
    code, out, err = run(capsys, "export", str(plan_file), "--to", "axolotl", "--out", str(tmp_path / "ax"))
    assert code == 0 and err == ""
    assert f"wrote {tmp_path / 'ax' / 'axolotl.yaml'}" in out
    assert (tmp_path / "ax" / "axolotl.yaml").is_file()
    assert "Lost:" in out and "'ist'" in out


def test_exact_export_says_so(plan_file, tmp_path, capsys):
    code, out, _ = run(capsys, "export", str(plan_file), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert code == 0 and "expressed exactly" in out
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["train_layerwise.py", "training_args.json"]


def test_a_plan_whose_model_cannot_be_found_is_not_exact(tmp_path, capsys):
    plan = make_plan(model="tiny-llama").save(tmp_path / "plan.yaml")
    code, out, _ = run(capsys, "export", str(plan), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert code == 0 and "expressed exactly" not in out and "'tiny-llama' cannot be found" in out
    code, out, err = run(capsys, "export", str(plan), "--to", "hf", "--out", str(tmp_path / "strict"), "--strict")
    assert code == 2 and err.count("\n") == 1 and "'tiny-llama' cannot be found" in err


def test_strict_refuses_a_lossy_export_and_writes_nothing(plan_file, tmp_path, capsys):
    code, out, err = run(capsys, "export", str(plan_file), "--to", "lmflow", "--out", str(tmp_path / "lm"), "--strict")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--strict" in err and "'ist'" in err
    assert not (tmp_path / "lm").exists()


def test_strict_passes_an_exact_export(plan_file, tmp_path, capsys):
    code, _, _ = run(capsys, "export", str(plan_file), "--to", "planner", "--out", str(tmp_path / "p"), "--strict")
    assert code == 0 and (tmp_path / "p" / "plan.yaml").read_bytes() == plan_file.read_bytes()


def test_default_out_dir(plan_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "export", str(plan_file), "--to", "peft")
    assert code == 0 and (tmp_path / "export" / "peft" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["missing.yaml", "--to", "hf"], "must exist"),
        (["--to", "nope"], "must be one of"),
    ],
)
def test_bad_input_is_one_line_exit_2(plan_file, tmp_path, capsys, argv, needle):
    if argv[0] == "--to":
        argv = [str(plan_file), *argv]
    else:
        argv = [str(tmp_path / argv[0]), *argv[1:]]
    code, out, err = run(capsys, "export", *argv)
    assert code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_unknown_target_names_the_known_ones(plan_file, capsys):
    _, _, err = run(capsys, "export", str(plan_file), "--to", "nope")
    for name in ("axolotl", "hf", "llamafactory", "lmflow", "peft", "planner"):
        assert name in err


def test_invalid_plan_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nnum_layers: zero\n")
    code, _, err = run(capsys, "export", str(bad), "--to", "hf")
    assert code == 2 and err.count("\n") == 1 and "plan schema" in err
    bad.write_text("{unclosed: [")
    code, _, err = run(capsys, "export", str(bad), "--to", "hf")
    assert code == 2 and "must be YAML" in err


def test_plan_inconsistent_with_its_model(tmp_path, capsys):
    plan = make_plan(scorer="fixed", layers=[2, 7], train=TrainConfig(layers=[2, 7]))
    code, _, err = run(
        capsys, "export", str(plan.save(tmp_path / "p.yaml")), "--to", "llamafactory", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "0 <= i < 4" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out(plan_file, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run(capsys, "export", str(plan_file), "--to", "hf", "--out", str(locked / "sub"))
    assert code == 2 and err.count("\n") == 1 and "--out must be a writable directory" in err


def test_out_is_a_file(plan_file, tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    code, _, err = run(capsys, "export", str(plan_file), "--to", "hf", "--out", str(target))
    assert code == 2 and err.count("\n") == 1 and "--out must be a writable directory" in err


def test_plan_with_too_many_active_layers(tmp_path, capsys):
    plan = make_plan(active_layers=5, train=TrainConfig())
    code, _, err = run(
        capsys, "export", str(plan.save(tmp_path / "p.yaml")), "--to", "axolotl", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "active_layers <= num_layers - min_depth" in err and not (tmp_path / "o").exists()


def _proxy(kind: str):
    from planner.plan import ProxyInfo

    name = "built-in proxy (4 layers, hidden 64; default:maximum)" if kind == "builtin" else "the target"
    return ProxyInfo(name=name, kind=kind, num_layers=4, active_layers=2, learning_rate=1e-3, batch_size=32)


@pytest.mark.parametrize("to", ["axolotl", "hf", "llamafactory", "lmflow", "swift"])
def test_steps_sets_the_training_length_of_every_trainer(to, tmp_path, capsys):
    """The plan's steps are its trials' (a proxy's horizon); --steps N is the run's max steps in every trainer."""
    plan = make_plan(steps=50, proxy=_proxy("builtin")).save(tmp_path / "plan.yaml")
    for given, want in ((["--steps", "777"], "777"), ([], "50")):
        out_dir = tmp_path / f"{to}-{want}"
        code, out, _ = run(capsys, "export", str(plan), "--to", to, "--out", str(out_dir), *given)
        written = "\n".join(p.read_text() for p in out_dir.iterdir() if p.is_file())
        assert code == 0 and re.search(rf"max_steps\W+{want}\b", written), written[:2000]
        assert ("horizon of the proxy" in out) == (not given)


def test_a_plan_ranked_on_the_target_itself_exports_its_steps_without_a_note(tmp_path, capsys):
    plan = make_plan(steps=50, proxy=_proxy("target")).save(tmp_path / "plan.yaml")
    code, out, _ = run(capsys, "export", str(plan), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert (
        code == 0 and "note:" not in out and '"max_steps": 50' in (tmp_path / "hf" / "training_args.json").read_text()
    )
