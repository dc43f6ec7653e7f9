"""Plan: the tuner's answer, saved as YAML and read by exporters and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.config import TrainConfig
from planner.confirmation import Confirmation
from planner.errors import PlannerError
from planner.writable import write_atomic

BREAKDOWN_KEYS = ("weights", "gradients", "optimizer", "activations", "transient", "overhead")


class Breakdown(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    transient: int = 0
    overhead: int = 0


class BaselineResult(BaseModel):
    """A reference configuration run in the same study (LISA defaults, full FT, LoRA)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    predicted_peak_bytes: int
    fits: bool
    metric: float | None = None
    trial_number: int | None = None


class ProxyInfo(BaseModel):
    """What the plan's metric was measured on: the proxy and the proxy plan the target plan maps to."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str = Field(description="target | builtin | model | given")
    num_layers: int = Field(ge=1)
    hidden_size: int | None = None
    device: str = "cpu"
    active_layers: int = Field(ge=1, description="γ of the proxy plan")
    min_depth: int = Field(default=0, ge=0)
    learning_rate: float = Field(gt=0, description="the learning rate the proxy trained with (the searched value)")
    batch_size: int = Field(ge=1)


class TrainingData(BaseModel):
    """The data the study trained on, as exports need it to train the same way (see :mod:`planner.data.files`)."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(
        default=None, description="what --data named: a file (absolute) or a datasets name; None for a built-in task"
    )
    task: str | None = Field(
        default=None, description="the built-in task the study generated instead of reading a file"
    )
    format: Literal["jsonl", "json", "csv", "tsv", "text", "datasets", "builtin"] = Field(
        description="the file format (by extension), a datasets name, or a generated built-in task"
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "role -> record field as the loader found it: messages for chat records (the loss on the last assistant "
            "turn); prompt and answer (and input when present) for prompt/answer records, the loss on the answer only; "
            "text for plain text, the loss on all of it"
        ),
    )
    chat: list[Literal["history", "irregular", "pairs"]] = Field(
        default_factory=list,
        exclude_if=lambda v: not v,
        description=(
            "what of a messages file other trainers may read otherwise (planner.data.files.chat_traits): history "
            "(assistant turns before the answer), irregular (turns not user/assistant in alternation after one "
            "leading system turn), pairs (records of field pairs beside the messages records); written only when "
            "some are found"
        ),
    )

    @property
    def is_text(self) -> bool:
        return "text" in self.fields

    @property
    def is_chat(self) -> bool:
        return "messages" in self.fields


class Plan(BaseModel):
    """A layer-wise fine-tuning plan: which layers train, how they are drawn, and what it costs.

    ``data``, ``steps`` and ``train.seq_len`` are what exports need to run as written; plans written
    before ``data`` and ``steps`` existed load with None there.
    """

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    model: str = Field(description="the target: preset name, hub id, or local path as given to the tuner")
    model_type: str
    num_layers: int = Field(ge=1)
    layers_attribute: str = Field(description="dotted path of the decoder layers, e.g. model.layers")
    # the method
    active_layers: int = Field(ge=1, description="γ: decoder layers trained at once")
    min_depth: int = Field(default=0, ge=0, description="the lowest decoder layer a sampler may draw")
    period: int = Field(ge=1, description="K: steps between re-draws")
    scorer: str
    scorer_options: dict = Field(default_factory=dict)
    layers: list[int] | None = Field(default=None, description="fixed layer set for static plans")
    train_embeddings: bool = True
    train_head: bool = True
    learning_rate: float = Field(
        gt=0, description="for the target (from the proxy's by the rule in planner.tune.proxy.mapping)"
    )
    lora_rank: int | None = None
    # the training configuration the memory was predicted for
    train: TrainConfig
    device: str | None = Field(default=None, description="the device the budget is for (cuda adds device overhead)")
    vram_bytes: int | None = None
    predicted_peak_bytes: int
    breakdown: Breakdown
    # what the search measured
    metric_name: str = "accuracy"
    metric: float | None = None
    baselines: list[BaselineResult] = Field(default_factory=list)
    study_name: str | None = None
    storage: str | None = None
    trial_number: int | None = None
    proxy: ProxyInfo | None = None
    # what the exports train on: the study's data and its step count
    data: TrainingData | None = None
    steps: int | None = Field(
        default=None, ge=1, description="optimizer steps each trial trained (the exports' max_steps)"
    )
    # the candidates re-trained with several seeds; ``metric`` is then the plan's mean over them
    confirmation: Confirmation | None = None

    @model_validator(mode="before")
    @classmethod
    def _min_depth_from_train(cls, data):
        # plans written before the field existed (and callers that set only train.min_depth) carry it in train
        if isinstance(data, dict) and "min_depth" not in data:
            train = data.get("train")
            depth = train.get("min_depth") if isinstance(train, dict) else getattr(train, "min_depth", None)
            if isinstance(depth, int) and (
                train.get("active_layers") if isinstance(train, dict) else getattr(train, "active_layers", None)
            ):
                data = {**data, "min_depth": depth}
        return data

    @model_validator(mode="after")
    def _agrees_with_train(self):
        # the method fields and the TrainConfig the memory was predicted for describe one run
        problems = []
        for name in ("train_embeddings", "train_head", "lora_rank"):
            if getattr(self, name) != getattr(self.train, name):
                problems.append(
                    f"`{name} == train.{name}` must hold, but got {getattr(self, name)!r} and {getattr(self.train, name)!r}"
                )
        if self.train.active_layers is not None and self.train.min_depth != self.min_depth:
            problems.append(
                f"`min_depth == train.min_depth` must hold, but got {self.min_depth} and {self.train.min_depth}"
            )
        if self.train.active_layers is not None and self.train.active_layers != self.active_layers:
            problems.append(
                f"`active_layers == train.active_layers` must hold, but got {self.active_layers} and {self.train.active_layers}"
            )
        if (
            self.layers is not None
            and isinstance(self.train.layers, list)
            and sorted(self.layers) != sorted(self.train.layers)
        ):
            problems.append(f"`layers == train.layers` must hold, but got {self.layers} and {self.train.layers}")
        if sum(self.breakdown.model_dump().values()) != self.predicted_peak_bytes:
            problems.append(
                f"the breakdown must sum to predicted_peak_bytes, but got {sum(self.breakdown.model_dump().values())} != {self.predicted_peak_bytes}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def is_static(self) -> bool:
        return self.layers is not None

    def to_yaml(self) -> str:
        """The plan as YAML, exactly as :meth:`save` writes it."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the plan whole (through a temporary file in the same folder) or, on an error, not at all."""
        return write_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise PlannerError(f"plan file must exist, but {str(path)!r} was not found")
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise PlannerError(
                f"plan file must be YAML, but {str(path)!r} is not: {str(exc).splitlines()[0]}"
            ) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PlannerError(f"plan file {str(path)!r} must match the plan schema, but: {problems}") from None
