"""The training data, step count and output directory every export names, so the trainer's own command runs it.

:func:`training_data` records what ``planner tune --data`` read (the plan's ``data`` field);
:func:`data_of` is what an exporter writes for it: the file (or a placeholder where the study
generated a built-in task or the plan predates the field), its record fields (``messages`` for
chat records, a prompt/answer field pair, or ``text``), and ``data:`` lines for what the target
cannot read as planner read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from planner.plan import Plan, TrainingData

PLACEHOLDER = "YOUR_DATA.jsonl"  # what a built-in task's export points to: the user provides it
PLACEHOLDER_FIELDS = {"prompt": "instruction", "answer": "response"}
DEFAULT_STEPS = 150  # the tuner's default --steps, for plans that predate the plan's `steps`
BUILTIN_PREFIX = "default:"  # planner.data.load names a generated built-in task's workload "default:<task>"


def generated_data(workload_name: str) -> TrainingData:
    """A task the study generated (a built-in task, or a workload a library caller built), not read from a file."""
    return TrainingData(task=workload_name.removeprefix(BUILTIN_PREFIX), format="builtin")


def training_data(workload_name: str) -> TrainingData:
    """What a study's workload read, from its name (a ``--data`` file or datasets name, or ``default:<task>``):
    the file made absolute, its format and the record fields the loader takes (:func:`planner.data.files.to_pairs`)."""
    # planner.data (torch: the package loads workloads): deferred, the exporters load with 'planner --help'
    from planner.data.files import (
        FORMATS,
        INPUT_FIELD,
        MESSAGES_FIELD,
        PAIR_FIELDS,
        TEXT_FIELD,
        chat_traits,
        read_records,
    )

    if workload_name.startswith(BUILTIN_PREFIX):
        return TrainingData(task=workload_name[len(BUILTIN_PREFIX) :], format="builtin")
    path = Path(workload_name).expanduser()
    records = read_records(workload_name)  # the study read it moments ago: a local file or the datasets cache
    fmt = FORMATS[path.suffix.lower()] if path.is_file() else "datasets"  # read_records took only a known suffix
    names = set().union(*(r.keys() for r in records)) if records else set()
    fields: dict[str, str] = {}
    where = str(path.resolve()) if fmt != "datasets" else workload_name
    if MESSAGES_FIELD in names:  # the loader's order: chat turns first (other records' field pairs become user turns)
        return TrainingData.model_validate(
            {"path": where, "format": fmt, "fields": {"messages": MESSAGES_FIELD}, "chat": chat_traits(records)}
        )  # the traits' names are checked there
    for prompt, answer in PAIR_FIELDS:  # then the first field pair present
        if prompt in names and answer in names:
            fields = {"prompt": prompt, "answer": answer, **({"input": INPUT_FIELD} if INPUT_FIELD in names else {})}
            break
    else:
        fields = {"text": TEXT_FIELD}
    return TrainingData(path=where, format=fmt, fields=fields)


@dataclass
class DataRef:
    """What an export names as its training data."""

    path: str
    format: str  # jsonl | json | csv | tsv | text | datasets
    fields: dict[str, str]
    steps: int
    lost: list[str] = field(default_factory=list)
    # TrainingData.chat: what of a messages file a trainer may read otherwise
    chat: list[str] = field(default_factory=list)

    @property
    def is_text(self) -> bool:
        return "text" in self.fields

    @property
    def is_chat(self) -> bool:
        return "messages" in self.fields


def data_of(plan: Plan, target: str, *, formats: tuple[str, ...] = ("jsonl", "json", "csv")) -> DataRef:
    """The data ``target`` trains on for ``plan``; ``formats`` are the file formats its loader reads."""
    data, lost = plan.data, []
    steps = plan.steps or DEFAULT_STEPS
    if plan.steps is None:
        lost.append(
            f"data: the plan records no step count (written before plans did); max steps {steps} is the tuner's default --steps"
        )
    if data is None or data.format == "builtin":
        why = (
            f"the study trained on planner's generated built-in task {data.task!r}"
            if data is not None
            else "the plan records no training data (written before plans did)"
        )
        lost.append(
            f'data: {why}; provide a JSONL file of {{"instruction": ..., "response": ...}} records at '
            f"{PLACEHOLDER} (or edit the path) before running {target}"
        )
        return DataRef(PLACEHOLDER, "jsonl", dict(PLACEHOLDER_FIELDS), steps, lost)
    if data.format not in formats + ("datasets",):
        lost.append(
            f"data: {target} reads {', '.join(formats)} files, not {data.format} ({data.path}); convert it to JSONL "
            f"with the same fields before running {target}"
        )
    if data.format == "text":
        lost.append(
            f"data: {target} reads a text file one example per line; planner reads paragraphs when blank lines separate them"
        )
    if "pairs" in data.chat:
        lost.append(
            f"data: some records of {data.path} hold a field pair instead of messages, which planner reads as one user "
            f"turn and the answer; {target} reads the messages field only: convert them to messages records first"
        )
    return DataRef(str(data.path), data.format, dict(data.fields), steps, lost, list(data.chat))


def output_dir(target: str) -> str:
    """Where the trainer writes checkpoints (relative to the directory the command runs in)."""
    return f"output/planner-{target}"
