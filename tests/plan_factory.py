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
