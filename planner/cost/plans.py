"""Candidate plans under one budget: full fine-tuning, LoRA, and layer-wise γ = 1..L.

``planner estimate --vram 24GB`` without a trainable set prints this table; the tuner and the
reports can ask the same questions (what fits, the largest γ that fits, the cheapest plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from planner.config import TrainConfig
from planner.cost import estimate, replay
from planner.errors import PlannerError
from planner.levers import labels, shape_fields
from planner.recipes import CHECKPOINTING, QLORA, TORCHTUNE_FULL

if TYPE_CHECKING:
    from planner.cost.estimator import MemoryEstimate

DEFAULT_LORA_RANKS = (8, 16, 64)
QLORA_RANK = 16  # the QLoRA row: r=16, as the tuner's QLoRA baseline
# (train_embeddings, train_head): LISA trains both; BAdam-style layer-wise freezes both
DEFAULT_EMBEDDING_VARIANTS = ((True, True), (False, False))
# fields of the base configuration every candidate inherits (the shape and its levers); the trainable set is the
# candidate's own, and a recipe row sets its own levers
_SHARED_FIELDS = ("batch_size", "seq_len", "dtype", "amp", "gradient_checkpointing", *shape_fields())

Method = Literal["full", "lora", "layerwise"]


@dataclass(frozen=True)
class Candidate:
    """One plan of the table with its predicted memory."""

    name: str
    method: Method
    config: TrainConfig
    estimate: MemoryEstimate
    active_layers: int | None = None

    @property
    def peak_bytes(self) -> int:
        return int(self.estimate.peak_bytes)

    def fits(self, vram_bytes: int | None) -> bool | None:
        """``peak <= vram``; None without a budget."""
        return None if vram_bytes is None else self.peak_bytes <= vram_bytes

    def to_dict(self, vram_bytes: int | None = None) -> dict:
        out = {
            "name": self.name,
            "method": self.method,
            "active_layers": self.active_layers,
            "lora_rank": self.config.lora_rank,
            "train_embeddings": self.config.train_embeddings,
            "train_head": self.config.train_head,
            "peak_bytes": self.peak_bytes,
            "breakdown": self.estimate.breakdown.model_dump(),
        }
        if vram_bytes is not None:
            out["fits"] = self.fits(vram_bytes)
        return out


def variant_label(train_embeddings: bool, train_head: bool) -> str:
    """``E+H``, ``E``, ``H`` or ``frozen E+H``: the suffix of layer-wise rows and the key of their largest γ."""
    if train_embeddings and train_head:
        return "E+H"
    if train_embeddings:
        return "E"
    if train_head:
        return "H"
    return "frozen E+H"


def candidate_configs(
    base_cfg: TrainConfig,
    num_layers: int,
    *,
    lora_ranks=DEFAULT_LORA_RANKS,
    embedding_variants=DEFAULT_EMBEDDING_VARIANTS,
) -> list[tuple[str, Method, int | None, TrainConfig]]:
    """The table's configurations: full, LoRA per rank, then layer-wise γ = 1..L per embedding variant."""
    if num_layers < 1:
        raise PlannerError(f"num_layers must be >= 1, but got {num_layers}")
    shared = {k: getattr(base_cfg, k) for k in _SHARED_FIELDS}
    rows: list[tuple[str, Method, int | None, TrainConfig]] = [
        ("full", "full", None, TrainConfig(**shared, layers="all", train_embeddings=True, train_head=True)),
    ]
    for rank in lora_ranks:
        # LoRA adapters in every decoder layer, base weights (embeddings and head included) frozen
        rows.append(
            (
                f"lora r={rank}",
                "lora",
                None,
                TrainConfig(**shared, layers="all", lora_rank=rank, train_embeddings=False, train_head=False),
            )
        )
    rows += recipe_rows(shared, lora_ranks)
    for emb, head in embedding_variants:
        label = variant_label(emb, head)
        for active_layers in range(1, num_layers + 1):
            rows.append(
                (
                    f"layer-wise γ={active_layers} {label}",
                    "layerwise",
                    active_layers,
                    TrainConfig(
                        **shared, active_layers=active_layers, min_depth=0, train_embeddings=emb, train_head=head
                    ),
                )
            )
    return rows


def _named(name: str, cfg: TrainConfig) -> str:
    return f"{name} ({', '.join(labels(cfg))})"


def recipe_rows(shared: dict, lora_ranks=DEFAULT_LORA_RANKS) -> list[tuple[str, Method, int | None, TrainConfig]]:
    """The recipes 24 GB users run (planner.recipes), each row named with its levers: LoRA per rank with
    checkpointing, QLoRA r=16, full fine-tuning in torchtune's single-device form."""
    lora = dict(layers="all", train_embeddings=False, train_head=False)
    rows: list[tuple[str, Method, int | None, TrainConfig]] = []
    for rank in lora_ranks:
        cfg = TrainConfig(**{**shared, **CHECKPOINTING}, lora_rank=rank, **lora)
        rows.append((_named(f"lora r={rank}", cfg), "lora", None, cfg))
    if shared.get("amp", "none") == "none":  # 4-bit weights compute in the model's dtype, not under autocast
        cfg = TrainConfig(**{**shared, **QLORA}, lora_rank=QLORA_RANK, **lora)
        rows.append((_named(f"qlora r={QLORA_RANK}", cfg), "lora", None, cfg))
    cfg = TrainConfig(**{**shared, **TORCHTUNE_FULL}, layers="all", train_embeddings=True, train_head=True)
    rows.append((_named("full, torchtune", cfg), "full", None, cfg))
    return rows


def candidate_plans(
    spec,
    base_cfg: TrainConfig,
    device: str = "cuda",
    profile=None,
    *,
    lora_ranks=DEFAULT_LORA_RANKS,
    embedding_variants=DEFAULT_EMBEDDING_VARIANTS,
) -> list[Candidate]:
    """Estimate every candidate plan for ``spec`` with ``base_cfg``'s batch, sequence, precision and optimizer.

    Layer-wise rows are samplers over all L layers, so each peak is the sampler's worst case
    (``planner.cost.estimate`` with ``active_layers=γ``).
    """
    rows = candidate_configs(base_cfg, spec.num_layers, lora_ranks=lora_ranks, embedding_variants=embedding_variants)
    done = {}
    if device == "cuda":  # first learn which allocator replays the table needs, and run them on every core
        with replay.collecting() as jobs:
            for i, (*_, cfg) in enumerate(rows):
                asked = len(jobs)
                est = estimate(spec, cfg, device=device, profile=profile)
                if len(jobs) == asked:  # every replay it needed was known: the estimate is final
                    done[i] = est
        replay.run_pending(jobs)
    return [
        Candidate(
            name=name,
            method=method,
            config=cfg,
            active_layers=active_layers,
            estimate=done[i] if i in done else estimate(spec, cfg, device=device, profile=profile),
        )
        for i, (name, method, active_layers, cfg) in enumerate(rows)
    ]


def largest_fitting_active_layers(
    candidates: list[Candidate],
    vram_bytes: int,
    *,
    train_embeddings: bool | None = None,
    train_head: bool | None = None,
) -> Candidate | None:
    """The layer-wise candidate with the largest γ whose peak fits ``vram_bytes`` (None if none fits).

    ``train_embeddings``/``train_head`` restrict to one embedding variant; among equal γ the
    smaller peak wins.
    """
    fitting = [
        c
        for c in candidates
        if c.method == "layerwise"
        and c.peak_bytes <= vram_bytes
        and (train_embeddings is None or c.config.train_embeddings == train_embeddings)
        and (train_head is None or c.config.train_head == train_head)
    ]
    if not fitting:
        return None
    return max(fitting, key=lambda c: (c.active_layers, -c.peak_bytes))


def smallest_fitting(candidates: list[Candidate]) -> Candidate:
    """The candidate with the smallest peak: the smallest budget any plan of the table needs, and which plan."""
    if not candidates:
        raise PlannerError("candidates must not be empty, but got none")
    return min(candidates, key=lambda c: c.peak_bytes)
