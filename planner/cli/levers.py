"""Every lever's flag, declared once by its module (planner.levers), added to `estimate` and `tune`."""

from __future__ import annotations

import argparse

from planner.levers import all_levers


def add_lever_flags(parser: argparse.ArgumentParser, *, shape_only: bool = False) -> None:
    """Add each registered lever's flag (``shape_only``: those of the training shape a study fixes, for `tune`);
    values are read as text and validated with the config."""
    for lever in all_levers():
        flag = lever.flag
        if flag is None or (shape_only and not lever.in_shape):
            continue
        if flag.kind == "bool":
            parser.add_argument(
                flag.name, dest=flag.field, action=argparse.BooleanOptionalAction, default=None, help=flag.help
            )
        else:
            parser.add_argument(flag.name, dest=flag.field, metavar=flag.metavar, help=flag.help)


def lever_values(args, problems: list[str]) -> dict:
    """The config fields the user set through lever flags (lists split on commas)."""
    out = {}
    for lever in all_levers():
        flag = lever.flag
        if flag is None:
            continue
        value = getattr(args, flag.field, None)
        if value is None:
            continue
        if flag.kind == "list":
            items = [v.strip() for v in str(value).split(",")]
            if not all(items):
                problems.append(f"{flag.name} must be comma-separated names such as q_proj,v_proj, but got {value!r}")
                continue
            value = items
        out[flag.field] = value
    return out


def lever_flag(field: str) -> str:
    """The flag that sets config field ``field`` (for error messages), or ``--field`` when no lever owns it."""
    for lever in all_levers():
        if lever.flag and lever.flag.field == field:
            return lever.flag.name
    return "--" + field.replace("_", "-")
