"""`planner tune`'s options, each declared once (planner.tune.options): --help, the parser, the resume command."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import planner.tune
from planner.cli.main import build_parser, main
from planner.cli.tune import options_from
from planner.levers import all_levers
from planner.tune.options import TuneOptions, cli_options
from planner.tune.run import resume_command
from tune_helpers import write_user_workload

# values for the levers of the training shape whose flags take one (a bool lever is given in its --no-x form)
LEVER_VALUES = {"--optimizer": "sgd", "--loss-chunks": "2"}


def shape_levers():
    return [lever.flag for lever in all_levers() if lever.in_shape and lever.flag is not None]


def parse(argv: list[str]) -> TuneOptions:
    """The options the command line ``planner tune *argv`` runs with."""
    return options_from(build_parser().parse_args(["tune", *argv]))


def every_flag(tmp_path) -> list[str]:
    """`planner tune` with every option off its default, as small as a run gets: one trial of two steps on a tiny
    local model trained as its own proxy, on the CPU, without baselines or confirmation."""
    from planner.cost.device import DeviceProfile

    model, data = write_user_workload(tmp_path, text=True)
    profile = DeviceProfile(device="cpu", device_name="cpu", torch_version="2").save(tmp_path / "cpu.json")
    values = {
        "--vram": "1GB",
        "--study": "every-flag",
        "--storage": f"sqlite:///{tmp_path}/s.db",
        "--model": model,
        "--seq-len": "32",
        "--batch-size": "2",
        "--dtype": "float32",
        "--amp": "bf16",
        "--device": "cpu",
        "--profile": str(profile),
        "--proxy": "target",
        "--proxy-device": "cpu",
        "--data": data,
        "--steps": "2",
        "--eval-every": "1",
        "--seed": "3",
        "--threads": "2",
        "--jobs": "1",
        "--n-trials": "1",
        "--timeout": "900.0",
        "--scorers": "uniform",
        "--batch-sizes": "2",
        "--sampler": "random",
        "--pruner": "none",
        "--confirm-seeds": "0",
        "--confirm-top": "1",
        "--out": str(tmp_path / "plan.yaml"),
        "--multi-objective": None,
        "--lora": None,
        "--no-baselines": None,
        "--quiet": None,
    }
    options = [opt for opt in cli_options() if opt.kind != "levers"]
    assert sorted(values) == sorted(opt.flag for opt in options), "a new option needs a value here"
    assert all(values[opt.flag] is None for opt in options if opt.kind == "switch")
    argv = [a for flag, value in values.items() for a in (flag, value) if a is not None]
    for flag in shape_levers():
        if flag.kind == "bool":
            argv.append("--no-" + flag.name.removeprefix("--"))
        else:
            assert flag.name in LEVER_VALUES, f"a new lever flag needs a value here: {flag.name}"
            argv += [flag.name, LEVER_VALUES[flag.name]]
    return argv


def test_every_option_is_in_help_with_its_description(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--help"])
    assert exc.value.code == 0
    flat = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for opt in cli_options():
        if opt.kind == "levers":
            described = [(flag.name, flag.help) for flag in shape_levers()]
        else:
            assert opt.help and opt.help == TuneOptions.model_fields[opt.field].description, opt.field
            described = [(opt.flag, opt.help)]
        for flag, text in described:
            assert flag in flat and "".join(text.split()) in flat, flag


HEAVY = ("torch", "optuna", "transformers")
HELP_IMPORTS = f"""
import sys
from planner.cli.main import main
try:
    main(["tune", "--help"])
except SystemExit:
    pass
print("loaded:", *(name for name in {HEAVY!r} if name in sys.modules))
"""


def test_help_loads_neither_torch_nor_optuna_nor_transformers():
    """`planner tune --help` answers in a fraction of a second: it reads the options without the study modules'
    heavy dependencies (a fresh interpreter, so that nothing this test process loaded counts)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--n-trials" in done.stdout, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last == "loaded:", f"`planner tune --help` {last}"


def test_the_resume_command_gives_back_every_flag_without_running(tmp_path):
    """The round trip alone, for the forms a full run does not cover: no --study, and a lever switched on."""
    options = parse(["--vram", "24GiB", "--optimizer-in-backward", "--timeout", "60", "--scorers", "uniform,ist"])
    command = resume_command(options, "tune-20260101-000000")
    argv = shlex.split(command)
    assert argv[:6] == ["planner", "tune", "--vram", "24GiB", "--study", "tune-20260101-000000"]
    assert "--optimizer-in-backward" in argv and "--scorers" in argv
    assert parse(argv[2:]) == options.model_copy(update={"study": "tune-20260101-000000"})
    # a budget given in bytes from Python is written with its unit
    assert shlex.split(resume_command(TuneOptions(vram=10**9), "s"))[3] == "1000000000B"


def test_a_study_resumes_from_its_printed_command_with_every_flag(tmp_path, monkeypatch, capsys):
    argv = every_flag(tmp_path)
    given = parse(argv)
    capsys.readouterr()  # writing the model's weights
    real = planner.tune.run_tune

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # Ctrl-C in the first trial: the study and its settings are stored, and the message prints the resume command
    monkeypatch.setattr(planner.tune, "run_tune", lambda options, **kw: real(options, proxy=interrupted, **kw))
    assert main(["tune", *argv]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("planner tune: ")]
    assert len(err) == 1 and "resume with: planner tune --vram 1GB --study every-flag --storage " in err[0], err
    err = err[0]
    command = shlex.split(err.split("resume with: ", 1)[1])
    assert command[:2] == ["planner", "tune"]
    resumed = command[2:]

    # every flag the user gave is there with its value
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            assert arg in resumed, arg
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                assert resumed[resumed.index(arg) + 1] == argv[i + 1], arg
    assert parse(resumed) == given

    monkeypatch.setattr(planner.tune, "run_tune", real)
    assert main(["tune", *resumed]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "plan written to " + str(tmp_path / "plan.yaml") in out and "'every-flag'" in out
    assert (tmp_path / "plan.yaml").is_file()


def test_values_of_the_wrong_type_are_named_by_flag_with_every_other_problem(capsys):
    """Types are checked by TuneOptions, not argparse: one line, every problem, exit code 2."""
    code = main(
        [
            "tune",
            "--vram",
            "lots",
            "--n-trials",
            "abc",
            "--sampler",
            "foo",
            "--batch-sizes",
            "1,b",
            "--steps",
            "0",
            "--timeout",
            "soon",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in (
        "--vram must be a number with a unit",
        "--n-trials must be a valid integer, but got 'abc'",
        "--sampler must be 'tpe' or 'random', but got 'foo'",
        "--batch-sizes must be comma-separated, each a valid integer, but got '1,b'",
        "--steps must be > 0, but got 0",
        "--timeout must be a valid number, but got 'soon'",
    ):
        assert needle in err, needle
