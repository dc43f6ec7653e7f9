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
        digits = prompt[len("sort "):-1]
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
