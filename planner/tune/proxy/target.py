"""The target: the model a plan is for, in the shape it will be trained in.

Every trial's peak is predicted for the target; the proxy that trains briefly is a separate
object (:mod:`planner.tune.proxy.source`). The target's flags mean what they mean for
`planner estimate` and are validated by the same function (``planner.cli.estimate.validate``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from planner.cli.estimate import validate
from planner.config import TrainConfig
from planner.errors import PlannerError, ValidationProblems
from planner.levers import labels, shape_fields

if TYPE_CHECKING:
    from planner.cost.device import DeviceProfile
    from planner.spec import ModelSpec

# the embedded default question: Llama-3-8B in bfloat16, one 1024-token sequence per step, AdamW,
# on a 24 GB card (RTX 3090/4090, A10G, L4 class)
DEFAULT_TARGET = "llama-3-8b"
DEFAULT_SEQ_LEN = 1024
DEFAULT_BATCH_SIZE = 1
DEFAULT_DTYPE = "bfloat16"  # with --amp the weights are float32 (autocast), as in `planner estimate`
SHAPE_FIELDS = ("batch_size", "seq_len", "dtype", "amp", *shape_fields())  # optimizer, step in backward, loss chunks


@dataclass(frozen=True)
class Target:
    """The model the plan is for (``spec``), its training shape, and the device its budget is on."""

    source: str  # as the user named it (--model)
    spec: ModelSpec
    shape: TrainConfig  # batch_size, seq_len, dtype, amp, optimizer; no trainable set
    device: str
    profile: DeviceProfile
    profile_line: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    def shape_dict(self) -> dict:
        """The training shape as JSON (stored with a study, written into a plan)."""
        return {k: getattr(self.shape, k) for k in SHAPE_FIELDS}

    def describe(self) -> dict:
        """What a study stores about its target (a resume must match it)."""
        return {
            "model": self.source,
            "name": self.name,
            "model_type": self.spec.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "device": self.device,
        }

    def shape_label(self) -> str:
        s = self.shape
        return (
            f"batch {s.batch_size} × seq {s.seq_len}, {s.dtype}"
            + (f" + amp {s.amp}" if s.amp != "none" else "")
            + "".join(f", {w}" for w in [s.optimizer, *labels(s.model_copy(update={"optimizer": "adamw"}))])
        )

    def label(self) -> str:
        """``llama-3-8b (32 layers; batch 1 × seq 1024, bfloat16, adamw; budget on cuda)``."""
        return f"{self.name} ({self.num_layers} layers; {self.shape_label()}; budget on {self.device})"


class _Flags(argparse.Namespace):
    """`planner estimate`'s flags: those tune does not set read as absent."""

    def __getattr__(self, name):
        return None


def resolve_target(
    model: str | None = None,
    *,
    seq_len=None,
    batch_size=None,
    dtype=None,
    amp=None,
    levers=None,
    device: str = "cuda",
    profile: str | None = None,
    vram=None,
) -> tuple[Target | None, int | None, list[str]]:
    """(target, budget bytes, problems): the target flags validated exactly as `planner estimate` does.

    Defaults: the :data:`DEFAULT_TARGET` preset, :data:`DEFAULT_SEQ_LEN` tokens, batch
    :data:`DEFAULT_BATCH_SIZE`, bfloat16 weights (float32 under ``--amp``).
    """
    if dtype is None and amp in (None, "none"):
        dtype = DEFAULT_DTYPE
    flags = _Flags(
        model=model or DEFAULT_TARGET,
        seq_len=DEFAULT_SEQ_LEN if seq_len is None else seq_len,
        batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
        dtype=dtype,
        amp=amp,
        device=device,
        profile=profile,
        vram=vram,
        **(levers or {}),
    )
    try:
        spec, cfg, prof, line, vram_bytes = validate(flags)
    except ValidationProblems as exc:
        return None, None, list(exc.problems)
    except PlannerError as exc:
        return None, None, [str(exc)]
    shape = TrainConfig(**{k: getattr(cfg, k) for k in SHAPE_FIELDS})
    return Target(str(flags.model), spec, shape, device, prof, line), vram_bytes, []


def target_layers_attribute(spec) -> str:
    """Where the target keeps its decoder layers, from a model built on the meta device (no memory, no weights)."""
    # torch, transformers, planner.spec: deferred, 'planner tune --help' loads this module (planner.tune.options)
    import torch
    from transformers import AutoModelForCausalLM

    from planner.spec import layers_attribute

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(spec.config)
    return layers_attribute(model)


def workload_target(
    workload,
    *,
    seq_len=None,
    batch_size=None,
    dtype=None,
    amp=None,
    levers=None,
    device: str = "cuda",
    profile: str | None = None,
) -> Target:
    """A workload's own model as the target (library callers that pass a workload and no ``--model``):
    its longest example and suggested batch unless told otherwise, float32 weights unless told otherwise."""
    from planner.cost.profile import resolve_profile  # planner.cost (torch): deferred, as in target_layers_attribute

    shape = TrainConfig(
        batch_size=int(batch_size or getattr(workload, "batch_size", None) or DEFAULT_BATCH_SIZE),
        seq_len=int(seq_len or workload.seq_len),
        dtype=dtype or "float32",
        amp=amp or "none",
        **(levers or {}),
    )
    prof, line = resolve_profile(device, profile)
    return Target(str(workload.model_source), workload.spec, shape, device, prof, line)
