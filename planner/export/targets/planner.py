"""Target ``planner``: the plan itself, byte for byte as :meth:`Plan.save` writes it."""

from __future__ import annotations

import yaml

from planner.export.base import Export, Exporter, register_exporter
from planner.plan import Plan


@register_exporter("planner")
class PlanExporter(Exporter):
    description = "the plan YAML itself (round-trips through Plan.load and Plan.save unchanged)"

    def render(self, plan: Plan) -> Export:
        # the same serialization as Plan.save, so load -> export -> load is the identity
        return Export(self.name, {"plan.yaml": plan.to_yaml()})

    def keys(self, filename: str, text: str) -> set[str]:
        return set(yaml.safe_load(text))
