"""ModelSpec: a decoder-only causal LM described by its Hugging Face config.

``load_spec`` resolves, in order: a built-in preset name (stored as data in
``planner/spec/presets/*.json`` so planning works offline), a path to a ``config.json``,
a local model directory, and finally a Hugging Face hub id.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from planner.errors import PlannerError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity (as the user named it) and its transformers config."""

    name: str
    config: Any  # transformers.PretrainedConfig

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def tied_embeddings(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def with_layers(self, num_layers: int) -> "ModelSpec":
        """The same width with ``num_layers`` decoder layers (for reduced-depth traces)."""
        cfg = self.config.__class__.from_dict(self.config.to_dict())
        cfg.num_hidden_layers = num_layers
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = list(cfg.layer_types)[:num_layers] + [cfg.layer_types[-1]] * max(0, num_layers - len(cfg.layer_types))
        return ModelSpec(self.name, cfg)


def _presets_dir():
    return resources.files("planner.spec") / "presets"


@lru_cache(maxsize=None)
def _preset_table() -> dict[str, dict]:
    table = {}
    for entry in _presets_dir().iterdir():
        if entry.name.endswith(".json"):
            data = json.loads(entry.read_text())
            table[entry.name[: -len(".json")]] = data
    return table


def list_presets() -> dict[str, dict]:
    """Preset name -> {"hub_id", "config"}."""
    return dict(_preset_table())


def _config_from_dict(data: dict):
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise PlannerError(f"config must name its model_type, but got keys {sorted(data)[:8]}")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as exc:
        raise PlannerError(f"model_type must be one that transformers knows, but got {model_type!r} ({exc})") from None


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load_spec(model: str) -> ModelSpec:
    """Resolve ``model`` (preset, config.json path, local directory, or hub id) into a ModelSpec."""
    presets = _preset_table()
    key = _normalize_name(model)
    by_hub = {_normalize_name(v["hub_id"]): k for k, v in presets.items() if v.get("hub_id")}
    if key in presets or key in by_hub:
        name = key if key in presets else by_hub[key]
        return ModelSpec(name, _config_from_dict(presets[name]["config"]))
    path = Path(model).expanduser()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PlannerError(f"--model file must be a JSON config, but {str(path)!r} is not ({exc})") from None
        return ModelSpec(str(path), _config_from_dict(data))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlannerError(f"--model directory must contain config.json, but {str(path)!r} does not")
        return ModelSpec(str(path), _config_from_dict(json.loads((path / "config.json").read_text())))
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return _load_hub(model)
    raise PlannerError(
        f"--model must be a preset ({', '.join(sorted(presets))}), a config.json, a local model "
        f"directory or a hub id 'org/name', but got {model!r}"
    )


def _load_hub(model_id: str) -> ModelSpec:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_id)
    except Exception as exc:  # noqa: BLE001 - hub errors are many; all mean "cannot resolve"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(f"--model hub id must resolve to a config (offline? unknown?), but {model_id!r} failed: {first}") from None
    return ModelSpec(model_id, cfg)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (``model.to`` fails under FakeTensorMode)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_model(spec: ModelSpec, *, dtype: str | torch.dtype = "float32", num_layers: int | None = None, seed: int | None = 0):
    """Instantiate the causal LM from its config with random weights (no download)."""
    from transformers import AutoModelForCausalLM

    if num_layers is not None:
        spec = spec.with_layers(num_layers)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if seed is not None:
        torch.manual_seed(seed)
    cfg = spec.config
    cfg.use_cache = False
    if getattr(cfg, "_attn_implementation", None) in (None, "flash_attention_2"):
        cfg._attn_implementation = "sdpa"
    with default_dtype(torch_dtype):
        model = AutoModelForCausalLM.from_config(cfg)
    model.config.use_cache = False
    return model
