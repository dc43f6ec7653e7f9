"""TrainConfig: one training configuration whose memory the cost model predicts.

Validated where input enters (CLI flags, plan files, trial parameters); every problem is
reported at once. The fields of the method (what trains) are declared here; the fields of each
memory lever (checkpointing, optimizer, quantization, ...) by its module in :mod:`planner.levers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from planner.errors import collect
from planner.levers import all_levers, lever_fields

Dtype = Literal["float32", "bfloat16", "float16"]
Amp = Literal["none", "bf16", "fp16"]
Device = Literal["cpu", "cuda"]


class MethodConfig(BaseModel):
    """What trains and how. ``layers`` and ``active_layers`` are mutually exclusive.

    - ``layers="all"`` or a list of decoder-layer indices: a static trainable set;
    - ``active_layers=γ``: a sampler keeps γ layers active, drawn from ``min_depth..L-1``;
      the cost model predicts the sampler's worst case over every draw;
    - neither: only embeddings/head (as flagged) train.
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=1, ge=1, description="micro-batch size (sequences per step)")
    seq_len: int = Field(default=512, ge=1, description="tokens per sequence")
    dtype: Dtype = Field(default="float32", description="weight storage dtype")
    amp: Amp = Field(default="none", description="autocast with float32 weights (the HF Trainer's bf16=True/fp16=True)")
    layers: Literal["all"] | list[int] | None = Field(
        default=None, description="a static trainable set of decoder layers"
    )
    active_layers: int | None = Field(default=None, ge=1, description="γ: a sampler keeps this many layers active")
    min_depth: int = Field(default=0, ge=0, description="the lowest decoder layer a sampler may draw")
    train_embeddings: bool = Field(default=True, description="train the input embeddings")
    train_head: bool = Field(default=True, description="train the LM head and final norm")
    lora_rank: int | None = Field(default=None, ge=1, description="LoRA adapters of this rank in the trainable layers")

    @model_validator(mode="after")
    def _exclusive(self):
        problems = []
        if self.layers is not None and self.active_layers is not None:
            problems.append(
                f"`layers` and `active_layers` are exclusive, but got layers={self.layers!r} and active_layers={self.active_layers}"
            )
        if self.amp != "none" and self.dtype != "float32":
            problems.append(
                f"`amp` runs with float32 weights (as the HF Trainer's bf16=True does), but got dtype={self.dtype!r} with amp={self.amp!r}"
            )
        if isinstance(self.layers, list) and len(set(self.layers)) != len(self.layers):
            problems.append(f"`layers` must not repeat an index, but got {self.layers}")
        for lever in all_levers():
            problems += lever.problems(self)
        collect(problems)
        return self

    def check_against(self, num_layers: int) -> None:
        """Raise every problem of this config for a model with ``num_layers`` decoder layers."""
        problems = []
        if isinstance(self.layers, list):
            bad = [i for i in self.layers if not 0 <= i < num_layers]
            if bad:
                problems.append(f"layer indices must satisfy 0 <= i < {num_layers}, but got {bad}")
        if self.active_layers is not None:
            room = num_layers - self.min_depth
            if self.min_depth >= num_layers:
                problems.append(
                    f"`min_depth < num_layers` must hold, but got min_depth={self.min_depth} with {num_layers} layers"
                )
            elif self.active_layers > room:
                problems.append(
                    f"`active_layers <= num_layers - min_depth` must hold, but got active_layers={self.active_layers} > {num_layers} - {self.min_depth}"
                )
        collect(problems)

    def trainable_layers(self, num_layers: int) -> list[int]:
        """The static trainable set (``active_layers`` configs have none: ask the cost model for the worst case)."""
        if self.layers == "all":
            return list(range(num_layers))
        return sorted(self.layers or [])


if TYPE_CHECKING:

    class TrainConfig(MethodConfig):
        """For a type checker: the lever fields are made at import from the registered levers, so they are
        typed ``Any`` here rather than listed twice."""

        def __init__(self, **data: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...
else:
    TrainConfig = create_model("TrainConfig", __base__=MethodConfig, __module__=__name__, **lever_fields())
    TrainConfig.__doc__ = (
        MethodConfig.__doc__ + "\n\n    Lever fields: " + ", ".join(lever_fields()) + " (planner.levers)."
    )
