"""The exported `hf` script: reads every data format `planner tune` reads, and trains a tiny random
llama end to end on CPU while its callback switches layers."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from planner.config import TrainConfig
from planner.export import export_plan
from plan_factory import make_plan
from planner.plan import Plan
from planner.spec import build_model
from planner.spec.tiny import tiny_spec

WORDS = "the a cat dog sat ran on under mat rug and then it was red blue big small".split()
ROWS = 12  # planner tune needs at least 10 usable examples


def write_tiny_model(path):
    """A random 4-layer llama and a word-level tokenizer, saved as an ordinary model directory (offline)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    hf_tok.save_pretrained(path)
    model = build_model(tiny_spec("llama", num_layers=4, hidden=32, heads=2, kv_heads=1, vocab=64))
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    model.save_pretrained(path)


def sentence(i: int, n: int = 6) -> str:
    return " ".join((WORDS[i % len(WORDS) :] + WORDS)[:n])


def write_data(root) -> dict[str, str]:
    """One file per format `planner tune --data` reads."""
    files = {}
    pairs = {"instruction": "response", "prompt": "completion", "question": "answer"}
    for p, a in pairs.items():
        rows = [
            {p: sentence(i, 3), a: sentence(i + 5, 2), **({"input": sentence(i + 9, 2)} if p == "question" else {})}
            for i in range(ROWS)
        ]
        files[f"{p}.jsonl"] = "\n".join(json.dumps(r) for r in rows) + "\n"
        files[f"{p}.json"] = json.dumps(rows)
    text_rows = [{"text": sentence(i, 8)} for i in range(ROWS)]
    files["text.jsonl"] = "\n".join(json.dumps(r) for r in text_rows) + "\n"
    for ext, delim in (("csv", ","), ("tsv", "\t")):
        path = root / f"prompt.{ext}"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["prompt", "completion"], delimiter=delim)
            writer.writeheader()
            writer.writerows({"prompt": sentence(i, 3), "completion": sentence(i + 5, 2)} for i in range(ROWS))
        files[path.name] = path.read_text()
    files["lines.txt"] = "\n".join(sentence(i, 8) for i in range(ROWS)) + "\n"
    files["paragraphs.md"] = "\n\n".join(f"{sentence(i, 4)}\n{sentence(i + 1, 4)}" for i in range(ROWS)) + "\n"
    for name, text in files.items():
        (root / name).write_text(text)
    return {name: str(root / name) for name in files}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    write_tiny_model(root / "model")
    (root / "data").mkdir()
    return root, write_data(root / "data")


def hf_plan(**kw) -> Plan:
    base = dict(
        active_layers=1,
        period=2,
        scorer="cyclic",
        scorer_options={"order": "ascending"},
        learning_rate=1e-3,
        train=TrainConfig(active_layers=1, batch_size=2, seq_len=16),
    )
    base.update(kw)
    return make_plan(**base)


def load_script(path):
    spec = importlib.util.spec_from_file_location("exported_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_reads_every_format_planner_tune_reads(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from planner.data import load_workload

    root, data = tiny_dir
    export_plan(
        hf_plan(train=TrainConfig(active_layers=1, seq_len=512)).save(tmp_path / "plan.yaml"), "hf", tmp_path / "export"
    )
    script = load_script(tmp_path / "export" / "train_layerwise.py")
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    for name, path in sorted(data.items()):
        workload = load_workload(str(root / "model"), path)  # what `planner tune` trains on
        expected = Counter((e.prompt, e.answer) for e in workload.train + workload.held_out)
        got = Counter((e.prompt, e.answer) for e in script.read_examples(path, tokenizer, 512))
        assert got == expected, name
        assert all(prompt for prompt, _ in got) == workload.has_targets, name  # pairs keep a prompt


def run_script(script, model_dir, data, out, max_steps):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [
            sys.executable,
            str(script),
            "--model",
            str(model_dir),
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--max-steps",
            str(max_steps),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )  # a hang guard


def initial_loss(model_dir, script, data) -> float:
    """Mean loss of the untrained model over the script's own examples (forward only, independent of the run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from planner.data.workload import collate

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_script(script).read_examples(data, tokenizer, 16)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return float(model(**collate(examples, tokenizer.pad_token_id)).loss)


def test_exported_script_trains_and_switches_layers(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    root, data = tiny_dir
    # cyclic ascending with K=2 over 4 layers: 6 steps visit layers 0, 1, 2 (a deterministic schedule);
    # embeddings and head frozen, with gradient checkpointing (gradients must still reach the layers); costed with
    # padded batches, as the script's collator gives them: nothing is lost
    plan = hf_plan(
        train=TrainConfig(active_layers=1, batch_size=2, seq_len=16, gradient_checkpointing=True, padded_batches=True),
        train_embeddings=False,
        train_head=False,
    )
    res = export_plan(plan.save(tmp_path / "plan.yaml"), "hf", tmp_path / "export")
    script = tmp_path / "export" / "train_layerwise.py"
    # --data is given below
    assert script in res.written and [line for line in res.lost if not line.startswith("data:")] == []
    proc = run_script(script, root / "model", data["prompt.csv"], tmp_path / "run", max_steps=6)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "layerwise_history.json").read_text())
    assert summary["global_step"] == 6
    assert summary["switches"] == 2
    assert summary["history"] == [[0], [1], [2]]
    # the mean loss of the run: finite and below the untrained model's loss on the same examples
    assert math.isfinite(summary["train_loss"])
    assert summary["train_loss"] < initial_loss(root / "model", script, data["prompt.csv"])
    before, after = load_file(root / "model" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    changed = {name for name in before if not (before[name] == after[name]).all()}
    part = lambda name: name.split(".")[2] if name.startswith("model.layers.") else name  # noqa: E731
    assert {part(n) for n in changed} == {"0", "1", "2"}  # the drawn layers trained; layer 3, embeddings, head did not


def test_exported_script_names_bad_data_in_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    import runpy

    root, _ = tiny_dir
    export_plan(hf_plan().save(tmp_path / "plan.yaml"), "hf", tmp_path / "export")
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"title": "no usable field"}) + "\n")
    monkeypatch.setattr(sys, "argv", ["train_layerwise.py", "--model", str(root / "model"), "--data", str(bad)])
    with pytest.raises(SystemExit) as exit_:  # run as a script, in this process
        runpy.run_path(str(tmp_path / "export" / "train_layerwise.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "title" in err and "Traceback" not in err


def test_exported_script_static_lora_plan(tiny_dir, tmp_path):
    root, data = tiny_dir
    plan = hf_plan(
        layers=[2, 3],
        active_layers=2,
        scorer="semantic",
        scorer_options={},
        lora_rank=4,
        train=TrainConfig(layers=[2, 3], batch_size=2, seq_len=16),
        train_embeddings=False,
    )
    export_plan(plan.save(tmp_path / "plan.yaml"), "hf", tmp_path / "export")
    proc = run_script(
        tmp_path / "export" / "train_layerwise.py", root / "model", data["question.jsonl"], tmp_path / "run", 3
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "layerwise_history.json").read_text())
    assert summary["global_step"] == 3 and summary["switches"] == 0
    assert summary["history"] and all(active == [2, 3] for active in summary["history"])
    # the head trained outside the adapters, so the script saved the merged model, not an adapter
    assert (tmp_path / "run" / "config.json").is_file() and not (tmp_path / "run" / "adapter_config.json").exists()


def test_exported_script_trains_a_qlora_plan_with_4bit_weights(tiny_dir, tmp_path):
    """A QLoRA plan (NF4 + double quant, adapters on q/v only): the script loads the base with BitsAndBytesConfig,
    prepares it as peft does, and trains; only q/v adapters change, the 4-bit base weights stay as loaded."""
    pytest.importorskip("bitsandbytes")
    root, data = tiny_dir
    train = TrainConfig(
        layers="all",
        batch_size=2,
        seq_len=16,
        lora_rank=4,
        lora_targets=["q_proj", "v_proj"],
        quantize="nf4-dq",
        train_embeddings=False,
        train_head=False,
        dtype="float32",
    )
    plan = hf_plan(
        layers=[0, 1, 2, 3],
        active_layers=4,
        scorer="fixed",
        scorer_options={},
        lora_rank=4,
        train=train,
        train_embeddings=False,
        train_head=False,
    )
    export = export_plan(plan.save(tmp_path / "plan.yaml"), "hf", tmp_path / "export")
    script = (tmp_path / "export" / "train_layerwise.py").read_text()
    assert "'quantization_config': {'load_in_4bit': True" in script and "'bnb_4bit_use_double_quant': True" in script
    assert "'target_modules': ['q_proj', 'v_proj']" in script
    proc = run_script(
        tmp_path / "export" / "train_layerwise.py", root / "model", data["question.jsonl"], tmp_path / "run", 2
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "adapter_model.safetensors")
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in saved if ".lora_" in k}
    assert adapted == {"q_proj", "v_proj"}
    assert not export.lost or all("chunk" not in line for line in export.lost)
