"""Refusals that cost nothing: unwritable outputs before any work, and a resume that would mix settings.

A study's settings are its stored user attributes (``run_tune``'s ``study_attrs``). A resume may
not change any of them: trials trained with 150 steps and trials trained with 6 are not
comparable, and the study would go on reporting the old values. Every stored key is compared
(new keys are covered without a list here); a key a study predates is accepted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from planner.errors import PlannerError, collect

# how the user sets each stored setting (a key not listed is named as itself)
_FLAG_OF = {
    "vram_bytes": "--vram", "steps": "--steps", "seed": "--seed", "device": "--device",
    "multi_objective": "--multi-objective", "model": "--model", "workload": "--data", "proxy": "--proxy",
    "target": "--target", "target_shape": "the target's shape", "search_space": "the search space (--scorers, --lora, --batch-sizes)",
}
# stored for information only: a resume may differ there
RESUME_FREE: frozenset[str] = frozenset({"created", "planner_version", "command"})


def _json(value):
    """What the storage gives back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, default=str))


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_resume(name: str, stored: dict, now: dict) -> None:
    """Refuse, in one line naming both values of each, a resume whose settings differ from the study's."""
    diff = []
    for key in sorted(set(stored) & set(now) - RESUME_FREE):
        if _json(stored[key]) != _json(now[key]):
            flag = _FLAG_OF.get(key, key)
            diff.append(f"{flag} is {_short(stored[key])} in the study but {_short(now[key])} now")
    if diff:
        raise PlannerError(f"--study {name!r} must be resumed with the settings it was created with, but "
                           f"{'; '.join(diff)}: use the same flags or a new --study")


def writable_file_problem(path: str | Path, flag: str) -> str | None:
    """Why a file cannot be written at ``path`` (its folder may still be missing), or None."""
    path = Path(path).expanduser()
    if path.is_dir():
        return f"{flag} must be a file path, but {str(path)!r} is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{flag} must be writable, but {str(path)!r} is not"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} must be in a folder, but {str(parent)!r} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} must be writable, but {str(parent)!r} (where {str(path)!r} would be created) is not writable"
    return None


def check_outputs(out: str | None, study_name: str, storage: str) -> None:
    """Every file ``planner tune`` writes: the plan and a local storage, checked before any work."""
    from planner.tune.storage import local_storage_path

    problems = []
    plan = out if out else Path("studies") / study_name / "plan.yaml"
    problem = writable_file_problem(plan, "--out" if out else "the plan path (studies/<study>/plan.yaml; set --out)")
    if problem:
        problems.append(problem)
    local = local_storage_path(storage)
    if local is not None:
        problem = writable_file_problem(local, "--storage")
        if problem:
            problems.append(problem)
    collect(problems)
