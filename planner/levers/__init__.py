"""Memory levers, one module each (see :mod:`planner.levers.base` for the contract).

Every module in this package is imported here, so a new lever registers itself by existing.
"""

from __future__ import annotations

import importlib
import pkgutil

from planner.levers.base import LEVERS, ExportItems, Flag, Lever, register_lever

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def all_levers() -> list[Lever]:
    """Every registered lever, in the order their :meth:`~Lever.prepare` runs."""
    return sorted(LEVERS.values(), key=lambda lever: (lever.order, lever.name))


def active_levers(cfg) -> list[Lever]:
    """The levers ``cfg`` pulls."""
    return [lever for lever in all_levers() if lever.active(cfg)]


def lever_fields() -> dict:
    """Every lever's config fields, for :class:`planner.config.TrainConfig`."""
    out = {}
    for lever in all_levers():
        for name, spec in lever.fields.items():
            if name in out:
                raise RuntimeError(f"config field {name!r} is declared by two levers")
            out[name] = spec
    return out


def lever_of(field: str) -> Lever:
    """The lever that owns config field ``field``."""
    for lever in all_levers():
        if field in lever.fields:
            return lever
    raise KeyError(f"no lever owns the config field {field!r}")


def shape_fields() -> list[str]:
    """Config fields of the levers that belong to a study's training shape (set once for every trial)."""
    return [name for lever in all_levers() if lever.in_shape for name in lever.fields]


def fit_levers() -> list[Lever]:
    """Memory-only levers the search may pull for a plan over budget as sampled (``Lever.fit_value``), in order."""
    return [lever for lever in all_levers() if lever.fit_value is not None]


def labels(cfg) -> list[str]:
    """The levers ``cfg`` pulls, in words."""
    return [text for lever in active_levers(cfg) if (text := lever.label(cfg))]


__all__ = [
    "LEVERS",
    "ExportItems",
    "Flag",
    "Lever",
    "register_lever",
    "all_levers",
    "active_levers",
    "lever_fields",
    "lever_of",
    "shape_fields",
    "fit_levers",
    "labels",
]
