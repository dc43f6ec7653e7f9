"""Run the documentation's ```console examples and check (default) or rewrite (--write) their output.

Each ```console block between a page's ``<!-- section:NAME -->`` and ``<!-- /section:NAME -->``
markers holds ``$ planner ...`` commands (a trailing ``\\`` continues a command) followed by their
output. Every command runs in this process (``planner.cli.main.main``), stdout then stderr, with
an empty profile directory so the output does not depend on profiles measured on this machine.
What the page shows of the output is the real output with two abbreviations:

- table border lines (``┏━━┓``, ``└──┘``) are left out, trailing spaces stripped;
- a line ``  ...`` stands for rows left out: the rows kept are found again by their first cell
  (or the text before ``:``), so a rewrite keeps the same rows with fresh numbers; a JSON line
  ending in ``, ...}`` keeps its first keys.

    python studies/readme_examples.py                      # check docs/estimate.md, exit 1 on a difference
    python studies/readme_examples.py --write              # rewrite those blocks in docs/estimate.md
    python studies/readme_examples.py --file docs/profile.md --section profile   # another page and section

Blocks whose commands are not all ``planner`` commands (``cat``, ``python``) are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import os
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "docs" / "estimate.md"  # the page whose examples the tests check
DEFAULT_SECTIONS = ("estimate",)
ELLIPSIS = "  ..."
JSON_TAIL = ", ...}"
_BORDER = re.compile(r"^[\s┏┓┗┛┡┩└┘┌┐━─┳┻╇╈┼┴┬╋═╤╧╪│┃]*$")
_BOX = set("┏┓┗┛┡┩└┘┌┐━─┳┻╇╈┼┴┬╋═╤╧╪")


@dataclass
class Example:
    """One ``$ command`` of a console block and the output lines the page shows for it."""

    command: str  # as written, continuation lines included
    argv: list[str]
    shown: list[str]


def section_span(text: str, name: str) -> tuple[int, int]:
    start = text.index(f"<!-- section:{name} -->")
    return start, text.index(f"<!-- /section:{name} -->", start)


def console_blocks(text: str, name: str) -> list[tuple[int, int, str]]:
    """(start, end, body) of each ```console block inside the section, offsets into ``text``."""
    lo, hi = section_span(text, name)
    return [
        (lo + m.start(1), lo + m.end(1), m.group(1)) for m in re.finditer(r"```console\n(.*?)```", text[lo:hi], re.S)
    ]


def parse_block(body: str) -> list[Example]:
    examples: list[Example] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if not examples:
                raise ValueError(f"a console block must start with '$ command', but got {lines[i]!r}")
            examples[-1].shown.append(lines[i])
            i += 1
            continue
        command = [lines[i]]
        while command[-1].endswith("\\"):
            i += 1
            command.append(lines[i])
        joined = " ".join(part.rstrip("\\").strip() for part in command)[2:]
        examples.append(Example("\n".join(command), shlex.split(joined), []))
        i += 1
    return examples


def run_planner(argv: list[str]) -> list[str]:
    """stdout then stderr of ``planner ARGV`` run in this process, border lines dropped."""
    from planner.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv[1:])
        except SystemExit:
            pass
    lines = [line.rstrip() for line in (out.getvalue() + err.getvalue()).splitlines()]
    return [line for line in lines if line and not (_BORDER.match(line) and any(c in _BOX for c in line))]


def _key(line: str) -> str:
    """What identifies a line across runs: a table row's first cell, else the text before ':' or '('."""
    stripped = line.strip()
    if stripped[:1] in ("│", "┃"):
        return stripped[1:].split(stripped[0], 1)[0].strip()
    return re.split(r"[:(]", stripped, maxsplit=1)[0].strip()


def _find(lines: list[str], key: str, start: int) -> int:
    for i in range(start, len(lines)):
        if _key(lines[i]) == key:
            return i
    raise LookupError(f"no output line starts like {key!r} (the page keeps it)")


def _json_head(shown: str, actual: str) -> str:
    keys = list(json.loads(shown[: -len(JSON_TAIL)] + "}"))
    data = json.loads(actual)
    return json.dumps({k: data[k] for k in keys if k in data})[:-1] + JSON_TAIL


def regenerate(shown: list[str], actual: list[str]) -> list[str]:
    """The page's view of ``actual``: the same abbreviations as ``shown``, fresh lines."""
    if len(shown) == 1 and shown[0].endswith(JSON_TAIL) and len(actual) == 1:
        return [_json_head(shown[0], actual[0])]
    if ELLIPSIS not in shown:
        return actual
    segments, current = [], []
    for line in shown:
        if line == ELLIPSIS:
            segments.append(current)
            current = []
        else:
            current.append(line)
    segments.append(current)
    out, pos = [], 0
    for n, seg in enumerate(segments):
        if n:
            out.append(ELLIPSIS)
        if not seg:
            continue
        first = 0 if n == 0 else _find(actual, _key(seg[0]), pos)
        last = len(actual) - 1 if n == len(segments) - 1 else _find(actual, _key(seg[-1]), first)
        out.extend(actual[first : last + 1])
        pos = last + 1
    return out


def process(text: str, sections, *, log=print, name: str = "docs/estimate.md") -> tuple[str, list[str]]:
    """(the page's text with regenerated blocks, unified diffs of the blocks that changed); ``name`` labels the diffs."""
    diffs = []
    edits = []
    with tempfile.TemporaryDirectory() as profiles:
        old_env = os.environ.get("PLANNER_PROFILE_DIR")
        os.environ["PLANNER_PROFILE_DIR"] = profiles  # no profile measured here changes the output
        try:
            for section in sections:
                for start, end, body in console_blocks(text, section):
                    examples = parse_block(body)
                    if not all(ex.argv[:1] == ["planner"] for ex in examples):
                        log(
                            f"[{section}] skipped a block with commands other than planner: {[ex.argv[0] for ex in examples]}"
                        )
                        continue
                    new_lines = []
                    for ex in examples:
                        log(f"[{section}] $ {' '.join(ex.argv)}")
                        new_lines += ex.command.splitlines() + regenerate(ex.shown, run_planner(ex.argv))
                    new_body = "\n".join(new_lines) + "\n"
                    if new_body != body:
                        diffs.append(
                            "".join(
                                difflib.unified_diff(
                                    body.splitlines(True),
                                    new_body.splitlines(True),
                                    f"{name} [{section}]",
                                    "actual output",
                                )
                            )
                        )
                        edits.append((start, end, new_body))
        finally:
            if old_env is None:
                os.environ.pop("PLANNER_PROFILE_DIR", None)
            else:
                os.environ["PLANNER_PROFILE_DIR"] = old_env
    for start, end, new_body in sorted(edits, reverse=True):
        text = text[:start] + new_body + text[end:]
    return text, diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--file", type=Path, default=DEFAULT_FILE, help=f"the page (default: {DEFAULT_FILE.relative_to(ROOT)})"
    )
    parser.add_argument(
        "--section", action="append", help=f"section of the page (default: {', '.join(DEFAULT_SECTIONS)})"
    )
    parser.add_argument("--write", action="store_true", help="rewrite the page instead of checking it")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    path = args.file if args.file.is_absolute() else Path.cwd() / args.file
    label = str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
    text = path.read_text()
    new, diffs = process(text, args.section or DEFAULT_SECTIONS, log=lambda m: print(m, file=sys.stderr), name=label)
    if args.write:
        if new != text:
            path.write_text(new)
        print(f"{label}: {len(diffs)} block(s) rewritten")
        return 0
    for d in diffs:
        print(d)
    print(f"{label}: {len(diffs)} block(s) differ from the commands' output" if diffs else f"{label}: examples match")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
