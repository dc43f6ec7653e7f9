"""Plans for tests, consistent the way `planner tune` writes them."""

from planner.config import TrainConfig
from planner.plan import Breakdown, Plan


def consistent_plan(**fields) -> Plan:
    """Build a Plan whose TrainConfig and breakdown agree with its method fields and peak."""
    train = fields.get("train") or TrainConfig()
    update = {k: fields.get(k, Plan.model_fields[k].default) for k in ("train_embeddings", "train_head", "lora_rank")}
    if train.active_layers is not None:
        update["active_layers"] = fields["active_layers"]
    fields["train"] = train.model_copy(update=update)
    breakdown = fields.get("breakdown") or Breakdown()
    peak = fields.get("predicted_peak_bytes", sum(breakdown.model_dump().values()))
    rest = peak - sum(breakdown.model_dump().values())
    fields["breakdown"] = breakdown.model_copy(update={"transient": breakdown.transient + rest})
    fields["predicted_peak_bytes"] = peak
    return Plan(**fields)


def make_plan(**kw) -> Plan:
    """A LISA-like plan for a 4-layer tiny llama; keywords override any field."""
    base = dict(model="tiny-llama", model_type="llama", num_layers=4, layers_attribute="model.layers", active_layers=2,
                period=5, scorer="uniform", learning_rate=1e-4, train=TrainConfig(active_layers=2),
                predicted_peak_bytes=123_456, breakdown=Breakdown(weights=100_000))
    base.update(kw)
    return consistent_plan(**base)
