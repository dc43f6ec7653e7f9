"""The lever contract: one memory lever per module, registered by name (like scorers and exporters).

A lever owns
- its :class:`TrainConfig <planner.config.TrainConfig>` fields (``fields``) and CLI flag (``flag``),
  which ``planner estimate``, ``planner tune`` and the plan file share;
- its validation (:meth:`Lever.problems`): which methods and other levers it combines with;
- what the training step does under it (:meth:`Lever.prepare`, :meth:`Lever.batch`, :meth:`Lever.compute_loss`,
  :meth:`Lever.forward_context`, :meth:`Lever.install`): the cost model traces that same step, so its prediction follows;
- its line in each exporter (:meth:`Lever.export`: keys, or a "lost" line);
- whether the search may vary it (``searchable``: a result-changing choice the search samples) or pull it
  where a sampled plan does not fit as it is (``fit_value``: a memory-only lever, ``planner.tune.search.forms``).

Cache and reuse keys are computed from the whole validated config (``planner.cost.family``,
``planner.tune.proxy.mapping``), so a new field changes them without a hand-kept list.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from planner.errors import PlannerError

LEVERS: dict[str, "Lever"] = {}


@dataclass(frozen=True)
class Flag:
    """A lever's command-line flag. ``kind``: ``value`` (text, validated by the config), ``bool``
    (``--x/--no-x``) or ``list`` (comma-separated)."""

    name: str
    field: str
    help: str
    kind: str = "value"
    metavar: str | None = None


@dataclass
class ExportItems:
    """What a lever adds to one trainer's config: keys to set, and what the trainer cannot do."""

    keys: dict[str, Any] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)


class Lever:
    """Base strategy: a lever that is off changes nothing."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 50  # order of :meth:`prepare` (model-level changes before adapters)
    fields: ClassVar[dict[str, tuple[Any, Any]]] = {}  # config field -> (annotation, pydantic Field)
    flag: ClassVar[Flag | None] = None
    searchable: ClassVar[bool] = False
    # a memory-only lever's setting that the search may pull for a sampled plan over budget as it is, where the
    # user left its flag unset (planner.tune.search.forms); None: the search never pulls it
    fit_value: ClassVar[Any] = None
    # part of the target's training shape: set once by the user for every trial of a study (planner tune)
    in_shape: ClassVar[bool] = False
    # changes what a proxy run learns (not only its memory): a proxy other than the target trains with it
    changes_result: ClassVar[bool] = False
    # every exporter writes this lever's keys itself (they predate the registry; hf's checkpointing key depends on
    # the transformers version): its export() documents the mapping, the exporters do not merge it
    native_export: ClassVar[bool] = False
    # the trace runs the optimizer inside backward, so the optimizer is part of what a trace depends on
    optimizer_in_trace: ClassVar[bool] = False
    # (batch, seq_len) int64 tensors a batch carries under this lever beside its token ids and labels (batch())
    batch_keys: ClassVar[tuple[str, ...]] = ()

    def active(self, cfg) -> bool:
        """Whether ``cfg`` pulls this lever."""
        return False

    def problems(self, cfg) -> list[str]:
        """Why ``cfg`` cannot run with this lever (combinations with methods and other levers)."""
        return []

    def label(self, cfg) -> str | None:
        """A few words naming the lever as set in ``cfg`` (tables, baselines), or None when off."""
        return None

    def prepare(self, model, cfg, layers: list[int]):
        """Change the model before adapters and the trainable set are applied; returns the model."""
        return model

    def proxy_model(self, model, fields: dict, frozen_below: int | None = None):
        """The proxy model trained under this lever's ``fields`` (a point's lever values); default unchanged.
        ``frozen_below``: decoder layers below it never train (a static set), None: the point trains LoRA
        adapters and no layer's own weights. Only levers that change the result (``changes_result``) reach a
        proxy other than the target."""
        return model

    def input_requires_grad(self, cfg) -> bool:
        """Whether the lever makes the embedding output require grad (transformers' ``enable_input_require_grads``),
        so that every decoder layer backpropagates, frozen ones too."""
        return False

    def lora_targets(self, cfg, names: list[str]) -> list[str]:
        """The leaf names of the linear modules LoRA adapts (default: all of ``names``)."""
        return names

    def batch(self, batch: dict, cfg) -> dict:
        """The batch a trainer hands the step under this lever (its :attr:`batch_keys` added); default unchanged."""
        return batch

    def compute_loss(self, model, batch: dict, cfg):
        """The training loss, where the lever changes how it is computed; None leaves it to the model."""
        return None

    def forward_context(self, model, cfg):
        """A context entered around the step's forward and loss (e.g. saved-tensor hooks); default: none."""
        return contextlib.nullcontext()

    def optimizer_strategy(self, strategy, cfg):
        """The optimizer strategy as the cost model counts it under this lever (default: unchanged)."""
        return strategy

    def install(self, model, cfg, build_optimizer):
        """Hook into the step (e.g. the optimizer step in backward); returns an optimizer-like object or None."""
        return None

    def export(self, target: str, cfg, layers_attribute: str = "model.layers") -> ExportItems:
        """Keys for trainer ``target`` (hf, axolotl, llamafactory, lmflow, swift, planner) or a lost line;
        ``layers_attribute``: where the model keeps its decoder layers (module names a key may need)."""
        return ExportItems()


def is_fake(t) -> bool:
    """Whether ``t`` is a FakeTensor (the cost model traces large models under ``FakeTensorMode``)."""
    from torch._subclasses.fake_tensor import is_fake as torch_is_fake  # deferred: the config imports every lever

    return torch_is_fake(t)


def causal_lm(model):
    """The transformers causal LM a lever works on, under an optional peft wrapper."""
    from planner.spec.arch import unwrap_peft  # deferred: it imports torch, which the config need not load

    return unwrap_peft(model)


def register_lever(cls: type[Lever]) -> type[Lever]:
    """Class decorator: file one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise PlannerError(f"a lever must have a name, but {cls.__name__} has none")
    if cls.name in LEVERS and type(LEVERS[cls.name]) is not cls:
        raise PlannerError(
            f"lever names must be unique, but {cls.name!r} is already registered by {type(LEVERS[cls.name]).__name__}"
        )
    LEVERS[cls.name] = cls()
    return cls
