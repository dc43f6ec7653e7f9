"""The search space of `planner tune`: what one trial chooses, and the training config it is costed as.

Parameters (the names are the trial record's ``params`` keys), all in the target's numbering:
``active_layers`` (γ, active decoder layers, 1..L), ``min_depth`` (the lowest layer a sampler may draw;
with embeddings frozen nothing below it backpropagates, so it bounds activation memory; a
point whose γ does not fit above it is moved down to L - γ), ``gradient_checkpointing``,
``period`` (K, steps between re-draws), ``scorer`` (how layers are drawn), ``train_embeddings``,
``train_head``, ``lr`` (the proxy's learning rate, log scale), and, when asked for,
``lora_rank`` (0 = full layer weights, r > 0 = rank-r LoRA adapters inside the layers),
``quantize`` (LoRA points only: their frozen base weights in NF4 with double quantization, QLoRA) and
``batch_size`` (the target's micro-batch). Memory-only levers are not sampled: a point takes them
where it does not fit as it is (``forms``, :mod:`planner.tune.search.forms`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from itertools import product
from typing import Any

from planner.config import TrainConfig
from planner.errors import PlannerError, collect

DEFAULT_PERIODS = (5, 10, 20, 40)
# The proxy's learning rates, wide enough for the LoRA baseline (5x DEFAULT_LR) and its sweep.
# LISA's defaults on the 32-layer default proxy (eval loss, 150 steps of 32, one seed; the default-task
# study of reports/bench_workloads.txt) score 0.823 at 3.3e-4, 0.394 at 1e-3 and 0.373 at 3e-3.
DEFAULT_LR_RANGE = (1e-4, 1e-2)
# LISA's defaults and the learning rate every baseline starts from
LISA_ACTIVE_LAYERS = 2
LISA_PERIOD = 20
DEFAULT_LR = 1e-3
DEFAULT_LORA_RANKS = (0, 8, 16, 32)
DEFAULT_BATCH_SIZE = 8
DEPTH_STEPS = 4  # min_depth choices: 0, L/4, L/2, 3L/4 (rounded)


def depth_choices(num_layers: int, steps: int = DEPTH_STEPS) -> tuple[int, ...]:
    """``min_depth`` choices: ``round(i·L/steps)`` for i < steps, distinct, each below L."""
    return tuple(sorted({min(num_layers - 1, (2 * i * num_layers + steps) // (2 * steps)) for i in range(steps)}))


@dataclass(frozen=True)
class TrialParams:
    """One point of the space: a complete layer-wise plan minus what the search measures."""

    active_layers: int
    period: int
    scorer: str
    train_embeddings: bool
    train_head: bool
    lr: float
    lora_rank: int | None = None  # None: the space has no LoRA choice; 0: full layer weights
    batch_size: int | None = None  # None: the space's only batch size
    min_depth: int = 0
    gradient_checkpointing: bool = False
    # lever fields set for this point beyond the space's extra: a sampled ``quantize`` (a param), a baseline's
    # recipe or a fitting form (recorded as the trial record's ``levers``, planner.tune.study.record)
    levers: tuple = ()

    def as_params(self) -> dict:
        """The trial's ``params`` dict (contract keys; optional ones only when chosen)."""
        out = asdict(self)
        out.pop("levers")
        return {k: v for k, v in out.items() if not (k in ("lora_rank", "batch_size") and v is None)}

    @property
    def adapter_rank(self) -> int | None:
        """LoRA rank when adapters train, None when layer weights train."""
        return self.lora_rank or None


@dataclass(frozen=True)
class SearchSpace:
    """The choices of one study. ``lr_choices`` discretizes the learning rate (grids, benchmarks)."""

    num_layers: int
    scorers: tuple[str, ...]
    seq_len: int
    periods: tuple[int, ...] = DEFAULT_PERIODS
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE
    lr_choices: tuple[float, ...] | None = None
    lora_ranks: tuple[int, ...] = ()
    batch_sizes: tuple[int, ...] = (DEFAULT_BATCH_SIZE,)
    embedding_choices: tuple[bool, ...] = (True, False)
    head_choices: tuple[bool, ...] = (True, False)
    min_depths: tuple[int, ...] = (0,)
    checkpointing: tuple[bool, ...] = (False,)
    # frozen-weight storage choices (``quantize``: None = unquantized), e.g. (None, "nf4-dq"), drawn by the points
    # whose frozen layers stay frozen: LoRA's, and those of a static scorer (``static_scorers``)
    quantize_choices: tuple = ()
    static_scorers: tuple[str, ...] = ()
    # memory-only lever settings a point over budget as sampled takes, in order (planner.tune.search.forms)
    forms: tuple[dict, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)  # fields every TrainConfig inherits (dtype, amp, ...)

    def __post_init__(self):
        problems = []
        if self.num_layers < 1:
            problems.append(f"the model must have >= 1 decoder layer, but got {self.num_layers}")
        if not self.scorers:
            problems.append("--scorers must name at least one scorer, but got none")
        if any(p < 1 for p in self.periods) or not self.periods:
            problems.append(f"periods must be >= 1, but got {list(self.periods)}")
        lo, hi = self.lr_range
        if not 0 < lo <= hi:
            problems.append(f"learning-rate range must satisfy 0 < low <= high, but got low={lo}, high={hi}")
        if self.lr_choices is not None and (not self.lr_choices or any(v <= 0 for v in self.lr_choices)):
            problems.append(f"learning rates must be > 0, but got {list(self.lr_choices)}")
        if any(r < 0 for r in self.lora_ranks):
            problems.append(f"LoRA ranks must be >= 0 (0 = full layer weights), but got {list(self.lora_ranks)}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            problems.append(f"batch sizes must be >= 1, but got {list(self.batch_sizes)}")
        if not self.min_depths or any(not 0 <= d < self.num_layers for d in self.min_depths):
            problems.append(
                f"min_depth choices must satisfy 0 <= d < {self.num_layers}, but got {list(self.min_depths)}"
            )
        if not self.checkpointing:
            problems.append("gradient checkpointing choices must not be empty, but got none")
        collect(problems)

    @property
    def default_batch_size(self) -> int:
        return self.batch_sizes[0]

    def suggest(self, trial) -> TrialParams:
        """Ask an Optuna trial for one point (enqueued trials get their fixed values back)."""
        active_layers = trial.suggest_int("active_layers", 1, self.num_layers)
        depth = trial.suggest_categorical("min_depth", list(self.min_depths))
        ckpt = trial.suggest_categorical("gradient_checkpointing", list(self.checkpointing))
        period = trial.suggest_categorical("period", list(self.periods))
        scorer = trial.suggest_categorical("scorer", list(self.scorers))
        emb = trial.suggest_categorical("train_embeddings", list(self.embedding_choices))
        head = trial.suggest_categorical("train_head", list(self.head_choices))
        if self.lr_choices is not None:
            lr = trial.suggest_categorical("lr", list(self.lr_choices))
        else:
            lr = trial.suggest_float("lr", *self.lr_range, log=True)
        rank = trial.suggest_categorical("lora_rank", list(self.lora_ranks)) if self.lora_ranks else None
        # conditional: only adapters, or a static set, keep frozen layers frozen for the whole run
        quant = (
            trial.suggest_categorical("quantize", list(self.quantize_choices))
            if self.quantize_choices and (rank or (scorer in self.static_scorers and active_layers < self.num_layers))
            else None
        )
        batch = trial.suggest_categorical("batch_size", list(self.batch_sizes)) if len(self.batch_sizes) > 1 else None
        return self.from_params(
            dict(
                active_layers=active_layers,
                period=period,
                scorer=scorer,
                train_embeddings=emb,
                train_head=head,
                lr=lr,
                lora_rank=rank,
                batch_size=batch,
                min_depth=depth,
                gradient_checkpointing=ckpt,
                quantize=quant,
            )
        )

    def from_params(self, p: dict) -> TrialParams:
        """The point a trial's ``params`` describe (``min_depth`` lowered to L - γ where γ needs the room)."""
        active_layers = int(p["active_layers"])
        rank, batch, quant = p.get("lora_rank"), p.get("batch_size"), p.get("quantize")
        return TrialParams(
            active_layers,
            int(p["period"]),
            str(p["scorer"]),
            bool(p["train_embeddings"]),
            bool(p["train_head"]),
            float(p["lr"]),
            None if rank is None else int(rank),
            None if batch is None else int(batch),
            min(int(p.get("min_depth", 0)), max(0, self.num_layers - active_layers)),
            bool(p.get("gradient_checkpointing", False)),
            (("quantize", quant),) if quant else (),
        )

    def enqueue_params(self, p: TrialParams) -> dict:
        """The ``params`` to enqueue ``p`` with: its searched keys, and its ``quantize`` where the space samples one
        (so that a fixed point's choice is never drawn for it)."""
        out = p.as_params()
        if self.quantize_choices and (
            p.adapter_rank or (p.scorer in self.static_scorers and p.active_layers < self.num_layers)
        ):
            out["quantize"] = dict(p.levers).get("quantize")
        return out

    def suggest_fixed(self, trial, params: TrialParams) -> TrialParams:
        """Record an enqueued fixed point (a baseline) with distributions compatible with this space.

        A LoRA rank in a space without LoRA (the LoRA baseline of a study without ``--lora``)
        is recorded with a one-choice distribution of its own.
        """
        got = self.suggest(trial)
        if params.lora_rank is not None and not self.lora_ranks:
            got = replace(got, lora_rank=int(trial.suggest_categorical("lora_rank", [params.lora_rank])))
        return got

    def contains(self, p: TrialParams, *, ignore_rank: bool = False) -> bool:
        """Whether ``p`` is a point of this space."""
        lr_ok = (
            (p.lr in self.lr_choices) if self.lr_choices is not None else self.lr_range[0] <= p.lr <= self.lr_range[1]
        )
        rank_ok = ignore_rank or ((p.lora_rank in self.lora_ranks) if self.lora_ranks else p.lora_rank is None)
        batch_ok = (p.batch_size in self.batch_sizes) if len(self.batch_sizes) > 1 else p.batch_size is None
        return (
            1 <= p.active_layers <= self.num_layers
            and p.period in self.periods
            and p.gradient_checkpointing in self.checkpointing
            and 0 <= p.min_depth <= self.num_layers - p.active_layers
            and p.scorer in self.scorers
            and p.train_embeddings in self.embedding_choices
            and p.train_head in self.head_choices
            and lr_ok
            and rank_ok
            and batch_ok
        )

    def batch_size_of(self, p: TrialParams) -> int:
        return p.batch_size if p.batch_size is not None else self.default_batch_size

    def train_config(self, p: TrialParams) -> TrainConfig:
        """The configuration whose peak the cost model predicts for ``p`` (the sampler's worst case).

        A static set with quantized frozen weights is costed as the set it may grow to: a static scorer trains
        within the top γ layers (``min_depth <= L - γ`` holds for every point), so layers ``L-γ..L-1`` stay in
        the model's dtype and every layer below is stored quantized."""
        static = bool(dict(p.levers).get("quantize")) and not p.adapter_rank
        return TrainConfig(
            **{**self.extra, **dict(p.levers)},
            batch_size=self.batch_size_of(p),
            seq_len=self.seq_len,
            layers=list(range(self.num_layers - p.active_layers, self.num_layers)) if static else None,
            active_layers=None if static else p.active_layers,
            min_depth=0 if static else p.min_depth,
            gradient_checkpointing=p.gradient_checkpointing,
            train_embeddings=p.train_embeddings,
            train_head=p.train_head,
            lora_rank=p.adapter_rank,
        )

    def point(self, **overrides) -> TrialParams:
        """A point with this space's optional keys filled in (LoRA off, default batch size)."""
        values: dict[str, Any] = dict(
            lora_rank=0 if self.lora_ranks else None,
            batch_size=self.default_batch_size if len(self.batch_sizes) > 1 else None,
        )
        values.update(overrides)
        return TrialParams(**values)

    def cheapest_points(self) -> list[TrialParams]:
        """The candidates for the smallest peak: γ=1, the smallest batch, every frozen/adapter/depth/checkpointing variant."""
        emb = [False] if False in self.embedding_choices else list(self.embedding_choices)
        head = [False] if False in self.head_choices else list(self.head_choices)
        ranks = sorted(set(self.lora_ranks)) if self.lora_ranks else [None]
        batch = min(self.batch_sizes) if len(self.batch_sizes) > 1 else None
        lr = self.lr_choices[0] if self.lr_choices is not None else self.lr_range[0]
        return [
            TrialParams(1, self.periods[0], self.scorers[0], e, h, lr, r, batch, d, c)
            for e, h, r, d, c in product(emb, head, ranks, self.min_depths, self.checkpointing)
        ]

    def frontier(self, fits, ends: bool = False) -> list[TrialParams]:
        """Per ``min_depth`` and checkpointing choice, the point with the most active layers that ``fits``
        (the default batch; embeddings and head frozen where the space lets them be, or with ``ends`` both
        trainable, empty when the space does not let them train): where the budget allows, more layers higher up."""
        if ends and (True not in self.embedding_choices or True not in self.head_choices):
            return []
        emb, head = (True, True) if ends else (False not in self.embedding_choices, False not in self.head_choices)
        out = []
        lr = self.lr_choices[0] if self.lr_choices is not None else self.lr_range[0]

        def at(active_layers, depth, ckpt):
            return self.point(
                active_layers=active_layers,
                period=self.periods[0],
                scorer=self.scorers[0],
                train_embeddings=emb,
                train_head=head,
                lr=lr,
                min_depth=depth,
                gradient_checkpointing=ckpt,
            )

        for depth, ckpt in product(self.min_depths, self.checkpointing):
            lo, hi = 0, self.num_layers - depth  # the largest γ with fits(γ): peaks grow with γ
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if fits(at(mid, depth, ckpt)):
                    lo = mid
                else:
                    hi = mid - 1
            if lo:
                out.append(at(lo, depth, ckpt))
        return out

    def grid(self) -> list[TrialParams]:
        """Every point of a discretized space (needs ``lr_choices``): for exhaustive benchmarks."""
        if self.lr_choices is None:
            raise PlannerError(
                "grid() needs a discretized learning rate (lr_choices), but the space has a continuous range"
            )
        ranks = list(self.lora_ranks) if self.lora_ranks else [None]
        batches = list(self.batch_sizes) if len(self.batch_sizes) > 1 else [None]
        return [
            TrialParams(g, k, s, e, h, lr, r, b, d, c)
            for g, k, s, e, h, lr, r, b, d, c in product(
                range(1, self.num_layers + 1),
                self.periods,
                self.scorers,
                self.embedding_choices,
                self.head_choices,
                self.lr_choices,
                ranks,
                batches,
                self.min_depths,
                self.checkpointing,
            )
            if d <= self.num_layers - g
        ]

    def describe(self) -> dict:
        """JSON-able summary stored with the study (a resume must use the same space)."""
        return {
            "num_layers": self.num_layers,
            "scorers": list(self.scorers),
            "periods": list(self.periods),
            "lr_range": list(self.lr_range),
            "lr_choices": None if self.lr_choices is None else list(self.lr_choices),
            "lora_ranks": list(self.lora_ranks),
            "batch_sizes": list(self.batch_sizes),
            "seq_len": self.seq_len,
            "min_depths": list(self.min_depths),
            "gradient_checkpointing": list(self.checkpointing),
            "quantize_choices": list(self.quantize_choices),
            "static_scorers": list(self.static_scorers),
            "forms": [dict(f) for f in self.forms],
        }
