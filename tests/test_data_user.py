"""Users' workloads: local model directories and JSONL/JSON/CSV/text data, and their errors."""

import csv
import json

import pytest
import torch

from planner.data import load_workload
from planner.data.files import read_records, to_pairs
from planner.data.tokenizer import CharTokenizer
from planner.data.workload import IGNORE_INDEX
from planner.errors import PlannerError
from planner.spec import build_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama with the built-in char tokenizer, saved as a normal HF directory."""
    from planner.spec.tiny import tiny_spec

    path = tmp_path_factory.mktemp("tiny-model")
    tok = CharTokenizer()
    spec = tiny_spec("llama", num_layers=2, hidden=32, heads=2, kv_heads=1, vocab=tok.vocab_size)
    spec.config.bos_token_id, spec.config.eos_token_id, spec.config.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    build_model(spec, seed=0).save_pretrained(path)
    tok.to_hf().save_pretrained(path)
    return str(path)


def _pairs(n):
    return [(f"double {i}", str(2 * i)) for i in range(n)]


def greedy_accuracy(wl, model) -> float:
    """Exact match of a token-by-token greedy decode (no ``generate``, no batching, no padding)."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for e in wl.held_out:
            ids, answer = list(e.prompt), []
            for _ in range(wl.max_answer_len):
                token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if token == wl.eos_id:
                    break
                answer.append(token)
                ids.append(token)
            hits += CharTokenizer().decode(answer).strip() == e.target.strip()
    return hits / len(wl.held_out)


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_pairs_with_local_model(model_dir, tmp_path):
    rows = [{"instruction": p, "input": "now" if i % 2 else "", "response": a} for i, (p, a) in enumerate(_pairs(30))]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    wl = load_workload(model_dir, data, seed=0)
    assert wl.name == data and wl.model_source == model_dir
    assert wl.metric_name == "eval_loss" and wl.direction == "minimize" and wl.has_targets  # accuracy beside it
    assert wl.spec.num_layers == 2 and wl.spec.model_type == "llama"
    assert len(wl.held_out) == 3 and len(wl.train) == 27 and wl.batch_size == 8
    targets = {e.target for e in wl.train} | {e.target for e in wl.held_out}
    assert targets == {a for _, a in _pairs(30)}
    assert not {e.prompt for e in wl.train} & {e.prompt for e in wl.held_out}
    tok = CharTokenizer()
    with_input = [e for e in wl.train if tok.decode(e.prompt).endswith("\nnow\n")]
    assert with_input and all(tok.decode(e.prompt).startswith("double ") for e in wl.train)
    batch = next(wl.train_batches(4, seed=0))
    row = batch["labels"][0]
    answer = row[row != IGNORE_INDEX].tolist()
    assert answer[-1] == tok.eos_token_id and tok.decode(answer) in targets
    assert next(wl.train_batches(40, seed=0))["input_ids"].shape[0] == 40  # more than the 27 training examples
    with pytest.raises(PlannerError, match="batch_size must be an integer >= 1"):
        next(wl.train_batches(0, seed=0))
    model = wl.new_model(0)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.use_cache is False
    assert wl.evaluate(model, metric="accuracy") == greedy_accuracy(wl, wl.new_model(0))
    # the split is deterministic by seed and changes with it
    again = load_workload(model_dir, data, seed=0)
    assert [e.prompt for e in again.held_out] == [e.prompt for e in wl.held_out]
    other = load_workload(model_dir, data, seed=1)
    assert [e.prompt for e in other.held_out] != [e.prompt for e in wl.held_out]


@pytest.mark.parametrize("fields", [("prompt", "completion"), ("question", "answer")])
def test_csv_and_json_field_pairs(model_dir, tmp_path, fields):
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        w.writerows(_pairs(20))
    wl = load_workload(model_dir, str(path), max_examples=12)
    assert wl.metric_name == "eval_loss" and wl.has_targets and len(wl.train) + len(wl.held_out) == 12
    jpath = tmp_path / "d.json"
    jpath.write_text(json.dumps([{fields[0]: p, fields[1]: a} for p, a in _pairs(20)]))
    assert load_workload(model_dir, str(jpath)).metric_name == "eval_loss"


def test_text_file_is_an_eval_loss_workload(model_dir, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(f"count {i} {i + 1} {i + 2}" for i in range(25)))
    wl = load_workload(model_dir, str(lines))
    assert wl.metric_name == "eval_loss" and wl.direction == "minimize"
    assert len(wl.train) + len(wl.held_out) == 25
    loss = wl.evaluate(wl.new_model(0))
    assert 0.0 < loss < 10.0
    # a random model is near log(vocab); the held-out loss must match a direct computation
    model = wl.new_model(0).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in wl.held_out:
            ids = torch.tensor([list(e.prompt) + list(e.answer)])
            logits = model(input_ids=ids).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total, count = total + float(nll), count + ids.shape[1] - 1
    assert loss == pytest.approx(total / count, rel=1e-4)
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("\n\n".join(f"line one {i}\nline two {i}" for i in range(12)))
    records = read_records(str(paragraphs))
    assert len(records) == 12 and records[0]["text"] == "line one 0\nline two 0"
    jsonl = _write_jsonl(tmp_path / "t.jsonl", [{"text": f"word {i}"} for i in range(12)])
    assert load_workload(model_dir, jsonl).metric_name == "eval_loss"


def test_model_without_data_gets_the_builtin_task(model_dir):
    wl = load_workload(model_dir, None, max_examples=40)
    assert wl.name == "default:maximum" and wl.metric_name == "eval_loss" and wl.model_source == model_dir
    assert len(wl.held_out) == 4 and len(wl.train) == 36 and wl.batch_size == 32
    assert wl.evaluate(wl.new_model(0), metric="accuracy") == greedy_accuracy(wl, wl.new_model(0))


def test_data_errors_are_one_line(model_dir, tmp_path):
    def err(data, model=model_dir, **kw):
        with pytest.raises(PlannerError) as info:
            load_workload(model, data, **kw)
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    assert "must exist" in err(str(tmp_path / "missing.jsonl")) and "missing.jsonl" in err(
        str(tmp_path / "missing.jsonl")
    )
    (tmp_path / "d.parquet").write_text("x")
    assert "must end in one of" in err(str(tmp_path / "d.parquet"))
    assert "is a directory" in err(str(tmp_path))
    fields = _write_jsonl(tmp_path / "f.jsonl", [{"foo": 1, "bar": 2}] * 20)
    msg = err(fields)
    assert "instruction/response" in msg and "'bar', 'foo'" in msg
    few = _write_jsonl(tmp_path / "few.jsonl", [{"prompt": p, "completion": a} for p, a in _pairs(4)])
    assert "at least 10 usable examples" in err(few) and "has 4" in err(few)
    blanks = _write_jsonl(tmp_path / "blank.jsonl", [{"prompt": p, "completion": ""} for p, _ in _pairs(20)])
    assert "has 0" in err(blanks)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\nnot json\n')
    assert "line 2" in err(str(tmp_path / "bad.jsonl"))
    data = _write_jsonl(tmp_path / "ok.jsonl", [{"prompt": p, "completion": a} for p, a in _pairs(20)])
    assert "max_examples must be >= 10" in err(data, max_examples=3)
    assert "max_seq_len" in err(data, max_seq_len=4)
    missing_model = str(tmp_path / "no-model")
    (tmp_path / "no-model").mkdir()
    assert "--model must be a loadable" in err(data, model=missing_model)
    config_only = tmp_path / "config.json"
    config_only.write_text("{}")
    assert "weights, not a config file" in err(data, model=str(config_only))


def test_to_pairs_prefers_the_first_field_pair():
    kind, pairs = to_pairs([{"instruction": "i", "response": "r", "text": "t"}], "x")
    assert kind == "pairs" and pairs == [("i", "r")]
    kind, pairs = to_pairs([{"text": "t"}, {"text": " "}], "x")
    assert kind == "text" and pairs == [("", "t")]


def test_data_without_model_uses_the_default_model(tmp_path, monkeypatch):
    """The cached default model directory is an ordinary HF directory: its saved tokenizer reads user data."""
    import planner.data.load as load_mod
    from planner.data.pretrain import PretrainRecipe, ensure_default_model

    tiny = PretrainRecipe(
        layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, seq_len=32, batch_size=4, steps=2, warmup=1
    )
    monkeypatch.setenv("PLANNER_CACHE_DIR", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(
        load_mod,
        "ensure_default_model",
        lambda recipe: asked.append(recipe.layers) or ensure_default_model(tiny, progress=False),
    )
    data = _write_jsonl(tmp_path / "d.jsonl", [{"question": p, "answer": a} for p, a in _pairs(20)])
    wl = load_workload(None, data)
    assert wl.model_source == str(ensure_default_model(tiny, progress=False))
    assert wl.spec.num_layers == 2 and wl.metric_name == "eval_loss"
    assert asked == [32]  # the default recipe's depth when no target asks for another
    tok = CharTokenizer()
    e = wl.train[0]
    assert list(e.prompt) == tok.encode(tok.decode(e.prompt), bos=True)  # same ids as the built-in tokenizer
    assert tok.decode(e.prompt).startswith("double ") and tok.decode(e.prompt).endswith("\n")
    assert wl.evaluate(wl.new_model(0), metric="accuracy") == greedy_accuracy(wl, wl.new_model(0))


def test_accuracy_matches_a_greedy_decode_of_a_trained_model(model_dir, tmp_path):
    """Batched, left-padded ``generate`` (the metric) against one token at a time, on a model that learned something."""
    rows = [{"prompt": f"n {i}", "completion": "7" if i % 3 else "seven"} for i in range(60)]
    wl = load_workload(model_dir, _write_jsonl(tmp_path / "d.jsonl", rows), seed=0)
    model = wl.new_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = wl.train_batches(16, seed=0)
    for _ in range(30):
        model(**next(batches)).loss.backward()
        opt.step()
        opt.zero_grad()
    expected = greedy_accuracy(wl, model)
    assert 0 < expected  # learned at least the majority answer: the comparison below is not 0 == 0
    assert wl.evaluate(model, metric="accuracy") == expected


def test_presets_never_reach_the_hub_when_fine_tuning(model_dir, tmp_path, monkeypatch):
    """A preset holds a config only: fine-tuning reads its hub id from the local cache, never the network."""
    from planner.spec import hub

    monkeypatch.setattr(hub, "hub_unreachable", lambda: pytest.fail("a preset must not probe the hub"))
    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "completion": a} for p, a in _pairs(20)])
    with pytest.raises(PlannerError) as err:
        load_workload("gpt2", data)
    msg = str(err.value)
    assert "--model preset 'gpt2' describes a model for planning only" in msg and "'openai-community/gpt2'" in msg


def test_encoder_only_model_is_refused_before_loading(tmp_path):
    from transformers import BertConfig

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(
        json.dumps(
            BertConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99
            ).to_dict()
        )
    )
    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": p, "completion": a} for p, a in _pairs(20)])
    with pytest.raises(PlannerError, match="decoder-only causal LM.*'bert': an encoder-only"):
        load_workload(str(bert), data)


def test_examples_longer_than_the_models_positions_are_skipped(tmp_path):
    from planner.spec.tiny import tiny_spec

    tok = CharTokenizer()
    spec = tiny_spec("llama", num_layers=2, hidden=32, heads=2, kv_heads=1, vocab=tok.vocab_size)
    spec.config.max_position_embeddings = 16
    build_model(spec, seed=0).save_pretrained(tmp_path / "m")
    tok.to_hf().save_pretrained(tmp_path / "m")
    rows = [{"prompt": f"n {i}", "completion": "7"} for i in range(20)]  # 7 or 8 tokens each
    rows += [{"prompt": "a long prompt " * 3, "completion": "7"} for _ in range(5)]  # > 40 tokens
    wl = load_workload(str(tmp_path / "m"), _write_jsonl(tmp_path / "d.jsonl", rows))
    assert len(wl.train) + len(wl.held_out) == 20 and wl.seq_len <= 16


def test_a_name_that_is_no_file_goes_to_the_datasets_loader(tmp_path, monkeypatch):
    """`planner tune --data org/name` is validated as a datasets name, not refused as a missing file."""
    import planner.data.files as files
    from planner.tune.options import TuneOptions

    seen = []
    monkeypatch.setattr(files, "_load_dataset", lambda name: seen.append(name) or [])
    assert files.read_records("some-org/some-dataset") == [] and seen == ["some-org/some-dataset"]
    assert not files.names_a_file("some-org/some-dataset") and files.names_a_file("./d.jsonl")
    TuneOptions(vram="40GB", data="some-org/some-dataset", out=str(tmp_path / "p.yaml")).validate_all()  # no error
    with pytest.raises(PlannerError, match="--data file must exist, but 'missing.jsonl' was not found"):
        TuneOptions(vram="40GB", data="missing.jsonl", out=str(tmp_path / "p.yaml")).validate_all()
