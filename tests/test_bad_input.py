"""Every bad input a newcomer may give: one line on stderr naming the value and the rule, exit code 2.

Each case runs the real command line (``main``) before any training or download; the hub cases
run the installed ``planner`` in a fresh process, as a user would.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.cli.main import main

PLANNER = str(Path(sys.executable).with_name("planner"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files: binary bytes under each name, a journal 'file' that is a directory, an encoder-only model."""
    from transformers import BertConfig

    root = tmp_path_factory.mktemp("bad")
    binary = bytes(range(256)) * 8  # not UTF-8 (0x80 cannot start a character)
    for name in ("weights.bin", "config.json", "plan.yaml", "profile.json"):
        (root / name).write_bytes(binary)
    (root / "journal.log").mkdir()
    (root / "wrong-profile.json").write_text(json.dumps({"device": "cuda", "context": "big"}))
    (root / "empty").mkdir()
    from planner.spec.tiny import tiny_spec

    tiny_spec("llama", num_layers=2).config.to_json_file(str(root / "tiny.json"))
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(
        json.dumps(
            BertConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99
            ).to_dict()
        )
    )
    return root


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_PROFILE_DIR", str(tmp_path / "profiles"))
    monkeypatch.chdir(tmp_path)  # nothing lands in the checkout (studies/, export/, reports/)


# (argv with {root} for the bad files, what the one line must contain: the flag/value and the rule)
CASES = {
    "estimate --vram 1e400GB": (
        ["estimate", "--model", "gpt2", "--vram", "1e400GB"],
        ["--vram must be at most", "'1e400GB'"],
    ),
    "tune --vram 1e400GB": (["tune", "--vram", "1e400GB"], ["--vram must be at most", "'1e400GB'"]),
    "estimate --vram 24": (
        ["estimate", "--model", "gpt2", "--vram", "24"],
        ["--vram must be a number with a unit", "bare number '24'"],
    ),
    "tune --vram 24": (["tune", "--vram", "24"], ["--vram must be a number with a unit", "bare number '24'"]),
    "estimate binary --model": (
        ["estimate", "--model", "{root}/weights.bin"],
        ["--model file must be a JSON config", "weights.bin", "utf-8"],
    ),
    "estimate binary config.json": (
        ["estimate", "--model", "{root}/config.json"],
        ["--model file must be a JSON config", "config.json"],
    ),
    "profile binary --model": (
        ["profile", "--model", "{root}/weights.bin", "--device", "cpu"],
        ["--model file must be a JSON config", "weights.bin"],
    ),
    "tune binary --model": (
        ["tune", "--vram", "24GB", "--model", "{root}/weights.bin"],
        ["--model file must be a JSON config", "weights.bin"],
    ),
    "estimate binary --profile": (
        ["estimate", "--model", "gpt2", "--profile", "{root}/profile.json"],
        ["--profile must be a device profile JSON", "profile.json"],
    ),
    "tune binary --profile": (
        ["tune", "--vram", "24GB", "--profile", "{root}/profile.json"],
        ["--profile must be a device profile JSON", "profile.json"],
    ),
    "tune malformed --profile": (
        ["tune", "--vram", "24GB", "--profile", "{root}/wrong-profile.json"],
        ["--profile must be a device profile JSON", "wrong-profile.json"],
    ),
    "export binary plan": (["export", "{root}/plan.yaml", "--to", "hf"], ["plan file must be YAML", "plan.yaml"]),
    "report binary plan": (["report", "{root}/plan.yaml"], ["plan file must be YAML", "plan.yaml"]),
    "tune journal directory": (
        ["tune", "--vram", "24GB", "--storage", "{root}/journal.log"],
        ["--storage journal file must be a file", "journal.log' is a directory"],
    ),
    "estimate BERT": (
        ["estimate", "--model", "{root}/bert"],
        ["--model must be a decoder-only causal LM", "'bert': an encoder-only"],
    ),
    "profile BERT": (["profile", "--model", "{root}/bert", "--device", "cpu"], ["decoder-only causal LM", "'bert'"]),
    "tune BERT": (["tune", "--vram", "24GB", "--model", "{root}/bert"], ["decoder-only causal LM", "'bert'"]),
    "estimate --seq-len past gpt2's positions": (
        ["estimate", "--model", "gpt2", "--seq-len", "100000", "--layers", "0"],
        ["--seq-len must be <= the model's n_positions=1,024", "100,000"],
    ),
    "profile --seq-len past gpt2's positions": (
        ["profile", "--model", "gpt2", "--seq-len", "100000", "--device", "cpu"],
        ["--seq-len must be <= the model's n_positions=1,024", "100,000"],
    ),
    "tune --seq-len past the target's positions": (
        ["tune", "--vram", "24GB", "--model", "llama-2-7b", "--seq-len", "8192"],
        ["--seq-len must be <= the model's max_position_embeddings=4,096", "8,192"],
    ),
    # output paths: tried (a probe file created and removed), not read from permission bits, which pass anything for root
    "tune --out under /proc": (
        ["tune", "--vram", "24GB", "--out", "/proc/forbidden/plan.yaml"],
        ["--out must be a writable file path", "'/proc/forbidden/plan.yaml' cannot be created"],
    ),
    "tune sqlite --storage under /proc": (
        ["tune", "--vram", "24GB", "--storage", "sqlite:////proc/forbidden/s.db"],
        ["--storage must be a writable file path", "'/proc/forbidden/s.db' cannot be created"],
    ),
    "tune journal --storage under /proc": (
        ["tune", "--vram", "24GB", "--storage", "/proc/forbidden/s.log"],
        ["--storage must be a writable file path", "'/proc/forbidden/s.log' cannot be created"],
    ),
    "profile --out under /proc": (
        ["profile", "--model", "gpt2", "--device", "cpu", "--out", "/proc/forbidden/x.json"],
        ["--out must be a file path this user can write", "'/proc/forbidden/x.json' cannot be created"],
    ),
    "export --out under /proc": (
        ["export", "{root}/plan.yaml", "--to", "hf", "--out", "/proc/forbidden/hf"],
        ["--out must be a writable directory", "'/proc/forbidden/hf' cannot be created", "plan file must be YAML"],
    ),
    "export --steps 0": (
        ["export", "{root}/plan.yaml", "--to", "hf", "--steps", "0"],
        ["--steps must be >= 1, but got 0", "plan file must be YAML"],
    ),
    "report --out under /proc": (
        ["report", "{root}/plan.yaml", "--out", "/proc/forbidden/r"],
        ["--out must be a writable directory", "'/proc/forbidden/r' cannot be created"],
    ),
    "tune --out name too long": (
        ["tune", "--vram", "24GB", "--out", "{root}/" + "p" * 300 + ".yaml"],
        ["--out must be a writable file path", "is 305 bytes, over the file system's limit of 255"],
    ),
    # float flags: finite and positive
    "tune --timeout nan": (
        ["tune", "--vram", "24GB", "--timeout", "nan"],
        ["--timeout must be a finite number of seconds > 0", "nan"],
    ),
    "tune --timeout inf": (
        ["tune", "--vram", "24GB", "--timeout", "inf"],
        ["--timeout must be a finite number of seconds > 0", "inf"],
    ),
    "tune --timeout 0": (
        ["tune", "--vram", "24GB", "--timeout", "0"],
        ["--timeout must be a finite number of seconds > 0", "0.0"],
    ),
    "tune --timeout -1": (
        ["tune", "--vram", "24GB", "--timeout", "-1"],
        ["--timeout must be a finite number of seconds > 0", "-1.0"],
    ),
    "tune --study of 600 characters": (
        ["tune", "--vram", "24GB", "--study", "s" * 600],
        ["--study must be at most 255 bytes", "600 bytes"],
    ),
    # each message names the flag the user gave: a proxy folder is --proxy, not --model
    "tune --proxy an empty folder": (
        [
            "tune",
            "--vram",
            "1GB",
            "--model",
            "{root}/tiny.json",
            "--device",
            "cpu",
            "--proxy",
            "{root}/empty",
            "--proxy-device",
            "cpu",
            "--quiet",
        ],
        ["--proxy must be a loadable causal-LM directory", "empty' is a directory without a config.json"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2(case, files, capsys):
    argv, needles = CASES[case]
    code = main([a.replace("{root}", str(files)) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"planner {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, err
    assert captured.out == ""


def _planner(*argv, env=None, timeout=120):
    start = time.perf_counter()
    proc = subprocess.run(
        [PLANNER, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PLANNER_PROFILE_DIR": "/nonexistent", **(env or {})},
    )
    return proc, time.perf_counter() - start


def test_hub_id_offline_fails_at_once_without_retries():
    proc, _ = _planner("estimate", "--model", "nobody-here/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "'nobody-here/no-such-model' is not cached" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr


def test_hub_id_with_an_unreachable_hub_fails_at_once_without_retries():
    """No offline variable: the hub's address does not answer (a closed local port stands in for no network)."""
    env = {
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HTTPS_PROXY": "",
        "https_proxy": "",
        "ALL_PROXY": "",
        "all_proxy": "",
        "HTTP_PROXY": "",
        "http_proxy": "",
    }
    proc, _ = _planner("estimate", "--model", "nobody-here/no-such-model", env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "http://127.0.0.1:9 cannot be reached (127.0.0.1:9: " in proc.stderr
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr


def test_installed_command_names_a_binary_model_file(files):
    proc, _ = _planner("estimate", "--model", str(files / "weights.bin"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--model file must be a JSON config" in proc.stderr


def test_a_file_system_error_is_one_line(monkeypatch, capsys):
    import planner.cli.estimate as estimate_cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/root/locked/out.json")

    monkeypatch.setattr(estimate_cli, "run", denied)
    assert main(["estimate", "--model", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert err == "planner estimate: error: [Errno 13] Permission denied: '/root/locked/out.json'\n"
