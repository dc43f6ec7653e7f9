"""Built-in tasks at the default split sizes, and the user-style ticket file of studies/bench_workloads.py."""

import importlib.util
import re
from collections import Counter
from pathlib import Path

import pytest

from planner.data.default import N_HELD_OUT, N_TRAIN, task_examples
from planner.data.files import read_records, to_pairs
from planner.data.load import HELD_OUT_FRACTION, MAX_HELD_OUT, PROMPT_SEPARATOR
from planner.data.tasks import TASKS
from planner.data.tokenizer import CHARS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_fills_the_default_split_with_distinct_held_out_prompts(task):
    train, held = task_examples(task, seed=0)
    assert len(train) == N_TRAIN and len(held) == N_HELD_OUT
    held_prompts = [p for p, _ in held]
    assert len(set(held_prompts)) == N_HELD_OUT
    assert not set(held_prompts) & {p for p, _ in train}  # no held-out prompt is trained on
    for prompt, answer in train[:200] + held[:200]:
        assert prompt and answer and set(prompt + answer) <= set(CHARS), (prompt, answer)
    assert task_examples(task, seed=0) == (train, held)


def test_sort_answers_are_the_prompt_digits_in_order():
    train, held = task_examples("sort", seed=0, n_train=300, n_held_out=100)
    for prompt, answer in train + held:
        digits = prompt[len("sort ") : -1]
        assert Counter(answer) == Counter(digits) and 3 <= len(digits) <= 5
        assert all(a <= b for a, b in zip(answer, answer[1:]))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_workloads", ROOT / "studies" / "bench_workloads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ticket_file_reads_as_distinct_prompt_answer_pairs(bench, tmp_path):
    path = bench.write_tickets(tmp_path / "tickets.jsonl")
    kind, pairs = to_pairs(read_records(path), path)
    assert kind == "pairs" and len(pairs) == bench.N_TICKETS
    prompts = [p for p, _ in pairs]
    assert len(set(prompts)) == len(prompts)  # the held-out split never repeats a training prompt
    assert all(p.startswith(bench.TICKET_PREFIX) for p in prompts)
    assert HELD_OUT_FRACTION * len(pairs) >= MAX_HELD_OUT  # the full held-out split of --data
    teams = Counter(a for _, a in pairs)
    assert set(teams) == set(bench.TICKETS) and min(teams.values()) > 0.2 * len(pairs)
    for prompt, answer in pairs:  # the default model's tokenizer knows every character
        assert set(prompt + PROMPT_SEPARATOR + answer) <= set(CHARS), prompt


def test_every_ticket_names_the_issue_of_its_team_only(bench):
    def pattern(template):  # the template with its fields as wildcards
        return re.compile(".+".join(re.escape(part) for part in re.split(r"\{\w+\}", template)))

    patterns = {team: [pattern(t) for t in texts] for team, texts in bench.TICKETS.items()}
    records = bench.ticket_records(400, seed=3)
    for record in records:
        owners = {team for team, ps in patterns.items() if any(p.search(record["prompt"]) for p in ps)}
        assert owners == {record["completion"]}, record
    assert Counter(r["completion"] for r in records) == {team: 100 for team in bench.TICKETS}


def _reference_batches(wl, batch_size: int, seed: int):
    """Workload.train_batches as it was first written: every batch collated from its examples."""
    import random

    from planner.data.workload import collate

    rng, order = random.Random(seed), []
    while True:
        while len(order) < batch_size:
            more = list(range(len(wl.train)))
            rng.shuffle(more)
            order.extend(more)
        chosen, order = order[:batch_size], order[batch_size:]
        yield collate([wl.train[i] for i in chosen], wl.pad_id)


def _varied_workload(n_train: int = 50, n_held_out: int = 70):
    import random

    from planner.data.workload import Example, Workload

    rng = random.Random(0)

    def example():
        prompt = tuple(rng.randrange(3, 40) for _ in range(rng.randint(1, 9)))
        return Example(prompt, tuple(rng.randrange(3, 40) for _ in range(rng.randint(1, 4))) + (1,), None)

    return Workload(
        name="varied",
        spec=None,
        model_source="-",
        train=[example() for _ in range(n_train)],
        held_out=[example() for _ in range(n_held_out)],
        model_factory=lambda s: None,
        decode=str,
        pad_id=0,
        eos_id=1,
        metric_name="eval_loss",
    )


@pytest.mark.parametrize("batch_size", [1, 7, 32, 64])  # 64 > 50 training examples: batches span epochs
def test_train_batches_are_the_tensors_collate_builds(batch_size):
    import itertools

    import torch

    wl = _varied_workload()
    fast = wl.train_batches(batch_size, seed=3)
    for got, want in itertools.islice(zip(fast, _reference_batches(wl, batch_size, seed=3)), 12):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].is_contiguous()
            assert torch.equal(got[key], want[key]), key


def test_a_large_training_split_is_collated_per_batch(monkeypatch):
    import itertools

    import torch

    from planner.data import workload as workload_mod

    wl = _varied_workload()
    monkeypatch.setattr(workload_mod, "TABLE_MAX_TOKENS", 10)
    assert wl._train_table() is None
    for got, want in itertools.islice(zip(wl.train_batches(8, seed=1), _reference_batches(wl, 8, seed=1)), 3):
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_eval_loss_over_the_kept_batches_is_bitwise_the_collated_one():
    from planner.data.workload import eval_loss
    from planner.spec import build_model
    from planner.spec.tiny import tiny_spec

    import torch

    wl = _varied_workload()
    model = build_model(tiny_spec("llama", num_layers=2, hidden=32, heads=2, kv_heads=1, vocab=48), seed=0).eval()
    with torch.no_grad():
        want = eval_loss(model, wl.held_out, wl.pad_id)  # collated on the spot, batch by batch
        assert wl.evaluate(model) == want and wl.evaluate(model) == want  # batches built, then kept
        assert wl.evaluate(model, max_examples=10) == eval_loss(model, wl.held_out[:10], wl.pad_id)
        wl.held_out = wl.held_out[:20]  # a new split is collated anew
        assert wl.evaluate(model) == eval_loss(model, wl.held_out, wl.pad_id)
