"""Chat data: ``messages`` records and prompt/answer pairs rendered with the model's chat template (or, without one, as
plain ``<role>: <content>`` lines), loss on the answer."""

import itertools
import json

import pytest
import torch

from planner.data import load_workload
from planner.data.files import to_pairs
from planner.data.load import render_chat, render_plain
from planner.data.tokenizer import EOS, SPECIALS, CharTokenizer
from planner.data.workload import IGNORE_INDEX, collate
from planner.errors import PlannerError
from planner.spec import build_model

# the characters of the built-in tokenizer only; the end of a turn is its <eos> token, as chat templates end turns
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '" + SPECIALS[EOS] + "' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def _model_dir(path, template):
    from planner.spec.tiny import tiny_spec

    tok = CharTokenizer()
    spec = tiny_spec("llama", num_layers=2, hidden=32, heads=2, kv_heads=1, vocab=tok.vocab_size)
    spec.config.bos_token_id, spec.config.eos_token_id, spec.config.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    build_model(spec, seed=0).save_pretrained(path)
    hf = tok.to_hf()
    if template:
        hf.chat_template = template
    hf.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("chat-model"), TEMPLATE)


def _records(n):
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": f"double {i}"},
                        {"role": "assistant", "content": str(2 * i)},
                    ]
                }
            )
        elif i % 3 == 1:
            out.append({"prompt": f"double {i}", "completion": str(2 * i)})
        else:
            out.append({"question": f"double {i}", "answer": str(2 * i), "input": "now"})
    return out


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_every_record_kind_is_a_chat_rendered_by_the_template(chat_dir, tmp_path):
    data = _write(tmp_path / "d.jsonl", _records(30))
    wl = load_workload(chat_dir, data)
    assert wl.metric_name == "eval_loss" and wl.direction == "minimize" and wl.has_targets  # accuracy beside it
    tok = CharTokenizer()
    eos = SPECIALS[EOS]
    prompts = {tok.decode(e.prompt, skip_special_tokens=False): e for e in wl.train + wl.held_out}
    assert len(prompts) == 30
    assert f"system: be brief{eos}user: double 0{eos}assistant: " in prompts  # a messages record, its system turn kept
    assert f"user: double 1{eos}assistant: " in prompts  # prompt/completion: one user turn
    assert f"user: double 2\nnow{eos}assistant: " in prompts  # question/answer with its input
    for text, e in prompts.items():
        assert tok.decode(e.answer, skip_special_tokens=False) == e.target + eos  # the answer ends its turn
        # the template's text only: no extra <bos>
        assert text.endswith("assistant: ") and not text.startswith(SPECIALS[1])
    # the loss is on the answer's tokens only
    batch = collate(wl.train[:4], wl.pad_id)
    for row, e in enumerate(wl.train[:4]):
        labels = batch["labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == list(e.answer)


def test_render_chat_splits_at_the_assistants_header(chat_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_dir)
    head, tail = render_chat(tok, [{"role": "user", "content": "2+2?"}], "4")
    assert (head, tail) == (f"user: 2+2?{SPECIALS[EOS]}assistant: ", f"4{SPECIALS[EOS]}")
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(PlannerError, match="prompt followed by the answer"):
        render_chat(tok, [{"role": "user", "content": "a"}], "b")


def test_chat_records_without_a_template_are_plain_turns_with_the_loss_on_the_answer(tmp_path):
    """A tokenizer without a chat template (the built-in proxy's): each turn ``<role>: <content>`` on its own line, then
    ``assistant: ``; the answer and <eos> are the completion, the only tokens with a loss."""
    plain = _model_dir(tmp_path / "plain", None)
    rows = _records(30) + [
        {
            "messages": [
                {"role": "user", "content": "double 40"},
                {"role": "assistant", "content": "80"},
                {"role": "user", "content": "and 41"},
                {"role": "assistant", "content": "82"},
            ]
        }
    ]
    wl = load_workload(plain, _write(tmp_path / "d.jsonl", rows))
    tok = CharTokenizer()
    bos, eos = SPECIALS[1], SPECIALS[EOS]
    examples = {tok.decode(e.prompt, skip_special_tokens=False): e for e in wl.train + wl.held_out}
    assert len(examples) == 31
    assert examples[f"{bos}system: be brief\nuser: double 0\nassistant: "].target == "0"
    assert f"{bos}user: double 1\nassistant: " in examples  # a field pair beside messages records: one user turn
    assert f"{bos}user: double 2\nnow\nassistant: " in examples
    # only the last assistant turn is the answer; an earlier one is part of the prompt
    assert examples[f"{bos}user: double 40\nassistant: 80\nuser: and 41\nassistant: "].target == "82"
    for e in examples.values():
        assert tok.decode(e.answer, skip_special_tokens=False) == e.target + eos
    assert render_plain([{"role": "user", "content": "2+2?"}], "4") == ("user: 2+2?\nassistant: ", "4")
    batch = collate(wl.train, wl.pad_id)
    for row, e in enumerate(wl.train):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        kept = labels != IGNORE_INDEX
        answer = slice(len(e.prompt), len(e.prompt) + len(e.answer))
        # the answer's tokens only
        assert labels[kept].tolist() == list(e.answer) == ids[answer].tolist() and kept[answer].all()
    model = wl.new_model(0)  # and it trains: a few steps lower the loss on the answer tokens
    before = wl.evaluate(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for batch in itertools.islice(wl.train_batches(8, seed=0), 10):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    assert wl.evaluate(model) < before


def test_bad_turns_are_one_line(tmp_path):
    plain = _model_dir(tmp_path / "plain", None)
    # pairs alone still train a model without a template: the prompt, a newline, the answer
    pairs = _write(tmp_path / "p.jsonl", [r for r in _records(30) if "prompt" in r] * 2)
    wl = load_workload(plain, pairs)
    assert CharTokenizer().decode(wl.train[0].prompt).endswith("\n") and wl.metric_name == "eval_loss"
    bad = [
        ({"messages": [{"role": "user", "content": "hi"}]}, "must end with the assistant's answer"),
        ({"messages": "hi"}, "must be a list of turns"),
        (
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
            "must be a list of turns",
        ),
    ]
    for record, needle in bad:
        with pytest.raises(PlannerError, match=needle) as exc:
            to_pairs([record], "d.jsonl")
        assert "record 1 of 'd.jsonl'" in str(exc.value) and "\n" not in str(exc.value)
