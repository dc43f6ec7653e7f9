"""Plans for tests, consistent the way `planner tune` writes them, for tiny models written as config files."""

import tempfile
from functools import lru_cache
from pathlib import Path

from planner.config import TrainConfig
from planner.plan import Breakdown, Plan

LAYERS_PATH = {"gpt2": "transformer.h"}  # every other tiny architecture keeps its layers at model.layers


@lru_cache(maxsize=None)
def _root() -> Path:
    return Path(tempfile.mkdtemp(prefix="planner-tiny-configs-"))


@lru_cache(maxsize=None)
def tiny_config(arch: str = "llama", num_layers: int = 4, dtype: str | None = "float32") -> str:
    """Path of a config.json for a tiny ``arch`` model (stored in ``dtype``, as a checkpoint's config says)."""
    from planner.spec.tiny import tiny_spec

    cfg = tiny_spec(arch, num_layers=num_layers).config
    cfg.dtype = dtype
    path = _root() / f"{arch}-{num_layers}-{dtype}" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.to_json_file(path)
    return str(path)


def consistent_plan(**fields) -> Plan:
    """Build a Plan whose TrainConfig and breakdown agree with its method fields and peak."""
    train = fields.get("train") or TrainConfig()
    update = {k: fields.get(k, Plan.model_fields[k].default) for k in ("train_embeddings", "train_head", "lora_rank")}
    if train.active_layers is not None:
        update["active_layers"] = fields["active_layers"]
        update["min_depth"] = fields.get("min_depth", train.min_depth)
    fields["train"] = train.model_copy(update=update)
    breakdown = fields.get("breakdown") or Breakdown()
    peak = fields.get("predicted_peak_bytes", sum(breakdown.model_dump().values()))
    rest = peak - sum(breakdown.model_dump().values())
    fields["breakdown"] = breakdown.model_copy(update={"transient": breakdown.transient + rest})
    fields["predicted_peak_bytes"] = peak
    return Plan(**fields)


def make_plan(arch: str = "llama", **kw) -> Plan:
    """A LISA-like plan for a tiny ``arch`` model (4 layers unless ``num_layers`` says); keywords override any field."""
    layers = kw.get("num_layers", 4)
    base = dict(
        model=tiny_config(arch, layers),
        model_type=arch,
        num_layers=layers,
        layers_attribute=LAYERS_PATH.get(arch, "model.layers"),
        active_layers=2,
        period=5,
        scorer="uniform",
        learning_rate=1e-4,
        train=TrainConfig(active_layers=2),
        predicted_peak_bytes=123_456,
        breakdown=Breakdown(weights=100_000),
    )
    base.update(kw)
    return consistent_plan(**base)
