"""Users' data: records from a local JSONL/JSON/CSV/TSV/text file, or a ``datasets`` name.

Each record becomes a prompt/answer pair: a ``messages`` list of chat turns (``role`` and
``content``; the last turn, the assistant's, is the answer and the turns before it the prompt),
else the first field pair present: ``instruction``/``response``, ``prompt``/``completion``,
``question``/``answer`` (an optional ``input`` field is appended to the prompt), else a ``text``
field (the loss is then on all of it). Lines (or blank-line-separated paragraphs) of a
``.txt``/``.md`` file are ``text`` records.

Only the last assistant turn of a ``messages`` record is trained on; earlier assistant turns are
part of the prompt. :func:`chat_traits` names what of a messages file a trainer may read
otherwise (exports say so).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

from planner.errors import PlannerError

PAIR_FIELDS = (("instruction", "response"), ("prompt", "completion"), ("question", "answer"))
INPUT_FIELD = "input"
TEXT_FIELD = "text"
MESSAGES_FIELD = "messages"
ROLES = ("system", "user", "assistant")
FileFormat = Literal["jsonl", "json", "csv", "tsv", "text"]
FORMATS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
    ".md": "text",
}


def names_a_file(data: str) -> bool:
    """Whether ``data`` can only mean a local file (an existing path, a known extension, or ``.``/``/``/``~``
    first); anything else that does not exist is tried as a ``datasets`` name."""
    path = Path(data).expanduser()
    return path.exists() or path.suffix.lower() in FORMATS or data.startswith((".", "/", "~"))


def read_records(data: str) -> list[dict]:
    """Records of a local file (format from its extension), or of a ``datasets`` name's train split."""
    path = Path(data).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise PlannerError(
            f"--data must be a file (.jsonl, .json, .csv, .tsv, .txt, .md) or a datasets name, but {data!r} is a directory"
        )
    if not path.exists():
        if names_a_file(data):
            raise PlannerError(f"--data file must exist, but {data!r} does not")
        return _load_dataset(data)
    kind = FORMATS.get(suffix)
    if kind is None:
        raise PlannerError(f"--data file must end in one of {', '.join(FORMATS)}, but got {data!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of a field name
    except (OSError, UnicodeDecodeError) as exc:
        raise PlannerError(f"--data file must be readable UTF-8 text, but {data!r} is not ({exc})") from None
    if kind == "jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise PlannerError(
                        f"--data JSONL lines must each be a JSON object, but line {n} of {data!r} is not ({exc.msg})"
                    ) from None
    elif kind == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlannerError(
                f"--data .json file must hold a list of objects, but {data!r} is not JSON ({exc.msg})"
            ) from None
        if isinstance(records, dict) and isinstance(records.get("data"), list):
            records = records["data"]
    elif kind in ("csv", "tsv"):
        records = list(csv.DictReader(text.splitlines(), delimiter="," if kind == "csv" else "\t"))
    else:
        blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
        # paragraphs when the file has blank lines between them, else one example per line
        pieces = (
            [b for b in blocks if b]
            if len([b for b in blocks if b]) > 1
            else [line.strip() for line in text.splitlines()]
        )
        records = [{TEXT_FIELD: p} for p in pieces if p]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise PlannerError(f"--data records must be JSON objects (or CSV rows), but {data!r} holds something else")
    return records


def _load_dataset(name: str) -> list[dict]:
    """The ``train`` split of a Hugging Face ``datasets`` name (needs the network or its cache)."""
    try:
        from datasets import load_dataset  # optional: datasets only for a --data that names a hub dataset

        ds = load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - any failure means the name did not resolve
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(
            f"--data must be an existing local file or a loadable datasets name, but {name!r} failed: {first}"
        ) from None
    return [dict(r) for r in ds]


def _text(value) -> str | None:
    if value is None:
        return None
    value = value if isinstance(value, str) else str(value)
    return value if value.strip() else None


def _chat(record: dict, n: int, data: str) -> tuple[tuple[dict, ...], str] | None:
    """(turns before the answer, the answer) of a ``messages`` record; None when it has none."""
    turns = record.get(MESSAGES_FIELD)
    if turns is None:
        return None
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and t.get("role") in ROLES and isinstance(t.get("content"), str) for t in turns
    ):
        raise PlannerError(
            f"--data {MESSAGES_FIELD} must be a list of turns with a role ({', '.join(ROLES)}) and a text "
            f"content, but record {n} of {data!r} is not"
        )
    if not turns or turns[-1]["role"] != "assistant" or len(turns) < 2:
        last = turns[-1]["role"] if turns else "nothing"
        raise PlannerError(
            f"--data {MESSAGES_FIELD} must end with the assistant's answer after at least one turn, but "
            f"record {n} of {data!r} ends with {last!r}"
        )
    answer = _text(turns[-1]["content"])
    return None if answer is None else (tuple({"role": t["role"], "content": t["content"]} for t in turns[:-1]), answer)


def _user_turn(record: dict) -> tuple[tuple[dict, ...], str] | None:
    """The first field pair of :data:`PAIR_FIELDS` in ``record`` as one user turn and its answer, else None."""
    for p_field, a_field in PAIR_FIELDS:
        prompt, answer = _text(record.get(p_field)), _text(record.get(a_field))
        if prompt is not None and answer is not None:
            extra = _text(record.get(INPUT_FIELD))
            return ({"role": "user", "content": prompt + ("\n" + extra if extra else "")},), answer
    return None


def to_pairs(records: list[dict], data: str) -> tuple[str, list[tuple]]:
    """``(kind, [(prompt, answer)])``: kind ``"chat"`` (prompt: the turns before the answer), ``"pairs"``
    (prompt: a string) or ``"text"`` (prompt is empty).

    ``messages`` records come first (where some records have turns, the others' field pairs become
    one user turn each), then the first field pair of :data:`PAIR_FIELDS` that the records have;
    records whose fields are empty are skipped.
    """
    fields = set().union(*(r.keys() for r in records)) if records else set()
    if MESSAGES_FIELD in fields:  # records without turns may still hold a field pair: one user turn each
        return "chat", [
            pair for n, r in enumerate(records, 1) if (pair := _chat(r, n, data) or _user_turn(r)) is not None
        ]
    for p_field, a_field in PAIR_FIELDS:
        if p_field in fields and a_field in fields:
            pairs = []
            for r in records:
                prompt, answer = _text(r.get(p_field)), _text(r.get(a_field))
                if prompt is None or answer is None:
                    continue
                extra = _text(r.get(INPUT_FIELD))
                pairs.append((prompt + ("\n" + extra if extra else ""), answer))
            return "pairs", pairs
    if TEXT_FIELD in fields:
        return "text", [("", t) for t in (_text(r.get(TEXT_FIELD)) for r in records) if t is not None]
    wanted = f"{MESSAGES_FIELD}, " + ", ".join(f"{a}/{b}" for a, b in PAIR_FIELDS) + f" or {TEXT_FIELD}"
    raise PlannerError(
        f"--data records must have the fields {wanted}, but {data!r} has {sorted(fields) or 'no fields'}"
    )


CHAT_TRAITS = ("history", "irregular", "pairs")


def chat_traits(records: list[dict]) -> list[str]:
    """What of a ``messages`` file other trainers may read otherwise than :func:`to_pairs`, in :data:`CHAT_TRAITS` order:

    - ``history``: a record has an assistant turn before its answer (planner trains on the answer only);
    - ``irregular``: a record's turns, after one leading system turn, are not user and assistant turns in
      alternation (user first), e.g. two user turns in a row or a system turn later on;
    - ``pairs``: a record has no ``messages`` but a field pair (planner reads it as one user turn).
    """
    found = set()
    for r in records:
        turns = r.get(MESSAGES_FIELD)
        if not isinstance(turns, list) or not turns:
            found |= {"pairs"} if _user_turn(r) is not None else set()
            continue
        roles = [t.get("role") if isinstance(t, dict) else None for t in turns]
        if roles[0] == "system":
            roles = roles[1:]
        if roles.count("assistant") > 1:
            found.add("history")
        if any(role != ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles)) or len(roles) % 2:
            found.add("irregular")
    return [t for t in CHAT_TRAITS if t in found]
