"""Refusals that cost nothing: unwritable outputs before any work, and a resume that would mix settings.

A study's settings are its stored user attributes (``run_tune``'s ``study_attrs``). A resume may
not change any of them: trials trained with 150 steps and trials trained with 6 are not
comparable, and the study would go on reporting the old values. Every stored key is compared
(new keys are covered without a list here); a key a study predates is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.errors import PlannerError, collect
from planner.tune.storage.backends import local_storage_path
from planner.writable import unwritable_reason

# how the user sets each stored setting (a key not listed is named as itself)
_FLAG_OF = {
    "vram_bytes": "--vram",
    "steps": "--steps",
    "seed": "--seed",
    "device": "--device",
    "multi_objective": "--multi-objective",
    "model": "--model",
    "workload": "--data",
    "proxy": "--proxy",
    "target": "--target",
    "target_shape": "the target's shape",
    "search_space": "the search space (--scorers, --lora, --batch-sizes)",
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
        raise PlannerError(
            f"--study {name!r} must be resumed with the settings it was created with, but "
            f"{'; '.join(diff)}: use the same flags or a new --study"
        )


#: parameters renamed in the study record (old name -> new); a study that holds an old name was written before
LEGACY_PARAMS = {"gamma": "active_layers"}


def check_param_names(name: str, trials) -> None:
    """Refuse, in one line, a study whose trials name a parameter by a name the record no longer uses."""
    old = sorted(
        {key for t in trials for key in {**t.system_attrs.get("fixed_params", {}), **t.params} if key in LEGACY_PARAMS}
    )
    if old:
        renamed = ", ".join(f"{k!r} is now {LEGACY_PARAMS[k]!r}" for k in old)
        raise PlannerError(
            f"--study {name!r} must name its parameters as this planner does, but its trials use {old} "
            f"({renamed}): resume it with the planner that created it, or start a new --study"
        )


def writable_file_problem(path: str | Path, flag: str) -> str | None:
    """``flag``'s problem when a file cannot be written at ``path``, or None."""
    reason = unwritable_reason(path)
    return (
        None
        if reason is None
        else f"{flag} must be a writable file path, but {str(Path(path).expanduser())!r} {reason}"
    )


def unwritten_plan(path: str | Path, exc: OSError, *, flag: str | None, study: str, storage: str, again: str) -> str:
    """One line for a plan that could not be written after the study ran (a full disk): nothing is lost but the file."""
    flag = flag or "the plan path (studies/<study>/plan.yaml; set --out)"
    return (
        f"{flag} must be writable, but writing {str(path)!r} failed ({exc.strerror or exc}): no plan file was written; "
        f"the study {study!r} is stored in {storage}: make room and run again to write the plan: {again}"
        + ("" if flag.startswith("the plan path") else f" --out {path}")
    )


def check_outputs(out: str | None, study_name: str, storage: str) -> None:
    """Every file ``planner tune`` writes: the plan and a local storage, checked before any work."""
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
