"""The exported `hf` script trains a tiny random llama end to end on CPU and its callback switches layers."""

import json
import os
import subprocess
import sys

import pytest

from planner.config import TrainConfig
from planner.export import export_plan
from plan_factory import consistent_plan
from planner.plan import Breakdown, Plan
from planner.spec import build_model
from planner.spec.tiny import tiny_spec

WORDS = "the a cat dog sat ran on under mat rug and then it was red blue big small".split()


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


def write_data(path):
    rows = [{"text": " ".join(WORDS[i % len(WORDS):] + WORDS[: i % len(WORDS)])} for i in range(8)]
    rows += [{"instruction": "the cat sat", "response": "on the mat"}] * 4
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def run_script(script, model_dir, data, out, max_steps):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), "--model", str(model_dir), "--data", str(data),
                           "--output-dir", str(out), "--max-steps", str(max_steps)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "layerwise_history.json").read_text())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    write_tiny_model(root / "model")
    write_data(root / "train.jsonl")
    return root


def make_plan(**kw) -> Plan:
    base = dict(model="tiny-llama", model_type="llama", num_layers=4, layers_attribute="model.layers", active_layers=1,
                period=2, scorer="cyclic", scorer_options={"order": "ascending"}, learning_rate=1e-3,
                train=TrainConfig(active_layers=1, batch_size=2, seq_len=16), predicted_peak_bytes=1, breakdown=Breakdown())
    base.update(kw)
    return consistent_plan(**base)


def test_exported_script_trains_and_switches_layers(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    # cyclic ascending with K=2 over 4 layers: 6 steps visit layers 0, 1, 2 (a deterministic schedule);
    # embeddings and head frozen, with gradient checkpointing (gradients must still reach the layers)
    plan = make_plan(train=TrainConfig(active_layers=1, batch_size=2, seq_len=16, gradient_checkpointing=True),
                     train_embeddings=False, train_head=False)
    res = export_plan(plan.save(tmp_path / "plan.yaml"), "hf", tmp_path / "export")
    script = tmp_path / "export" / "train_layerwise.py"
    assert script in res.written and res.lost == []
    summary = run_script(script, tiny_dir / "model", tiny_dir / "train.jsonl", tmp_path / "run", max_steps=6)
    assert summary["global_step"] == 6
    assert summary["switches"] == 2
    assert summary["history"] == [[0], [1], [2]]
    assert summary["train_loss"] == summary["train_loss"]  # finite, not NaN
    before, after = load_file(tiny_dir / "model" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    changed = {name for name in before if not (before[name] == after[name]).all()}
    part = lambda name: name.split(".")[2] if name.startswith("model.layers.") else name  # noqa: E731
    assert {part(n) for n in changed} == {"0", "1", "2"}  # the drawn layers trained; layer 3, embeddings, head did not


@pytest.mark.slow
def test_exported_script_static_lora_plan(tiny_dir, tmp_path):
    plan = make_plan(layers=[2, 3], active_layers=2, scorer="semantic", scorer_options={}, lora_rank=4,
                     train=TrainConfig(layers=[2, 3], batch_size=2, seq_len=16), train_embeddings=False)
    export_plan(plan.save(tmp_path / "plan.yaml"), "hf", tmp_path / "export")
    summary = run_script(tmp_path / "export" / "train_layerwise.py", tiny_dir / "model", tiny_dir / "train.jsonl", tmp_path / "run", 3)
    assert summary["global_step"] == 3 and summary["switches"] == 0
    assert summary["history"] and all(active == [2, 3] for active in summary["history"])
    # the head trained outside the adapters, so the script saved the merged model, not an adapter
    assert (tmp_path / "run" / "config.json").is_file() and not (tmp_path / "run" / "adapter_config.json").exists()
