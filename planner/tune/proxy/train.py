"""Proxy training: one configuration trained briefly on the workload, evaluated on its held-out split.

On CUDA every run also measures its training peak (evaluations excluded): the caching
allocator's ``max_memory_reserved`` and ``max_memory_allocated``, and the device memory in use at
that peak = (memory in use outside the allocator before the run: context, other processes) +
max reserved. An out-of-memory error becomes :class:`ProxyOutOfMemory` with the bytes that were free.
Where the target itself trains on the CPU (``TrainShape.measure``) every run measures the live tensor
bytes of its training steps, one peak per draw of the layer sampler (:class:`planner.tune.proxy.meters.CpuMeter`).
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field
from time import perf_counter
from typing import Callable

import torch

from planner.config import TrainConfig
from planner.cost.measure import compute_loss
from planner.data.workload import IGNORE_INDEX
from planner.spec.arch import find_decoder_layers
from planner.spec.model import DTYPES
from planner.errors import PlannerError
from planner.levers import Lever, all_levers
from planner.optimizers import get_optimizer
from planner.sampling import LayerSampler, train_layerwise
from planner.tune.proxy.meters import CpuMeter, CudaMeter
from planner.tune.search.space import TrialParams

MAX_HISTORY = 50  # sampler re-draws kept per trial (the report's importance heatmap)
# The proxy's learning-rate schedule. Constant: on the default proxy a linear decay to 0 gave no
# less seed noise (mean seed std of the eval loss over 9 plans at lr 1e-3: 0.061 linear, 0.056
# constant; reports/workload_spread.txt) and trains less in 150 steps.
SCHEDULES = ("constant", "linear")
DEFAULT_SCHEDULE = "constant"


@dataclass
class ProxyResult:
    metric: float
    history: list[dict]
    train_seconds: float
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    memory: dict | None = None  # measured bytes: every CUDA run, CPU runs of the target (see the module docstring)
    secondary: dict = field(default_factory=dict)  # figures shown next to the metric (Workload.secondary)


class ProxyOutOfMemory(PlannerError):
    """The proxy run did not fit the device."""

    def __init__(self, message: str, free_bytes: int):
        self.free_bytes = free_bytes
        super().__init__(message)


@dataclass
class TrainShape:
    """How a proxy run is shaped: the device, and for the target itself the target's training shape."""

    device: str = "cpu"
    seq_len: int | None = None  # pad/cut every batch to this length (None: the workload's own lengths)
    dtype: str = "float32"
    amp: str = "none"
    optimizer: str = "adamw"
    measure: bool = False  # on the CPU: measure the training peak per draw (the target itself trains; see CpuMeter)


def shaped_batches(batches, seq_len: int, pad_id: int):
    """``batches`` right-padded (or cut) to exactly ``seq_len`` tokens: the shape the target was costed at.

    The attention mask is left out: padding lies after every real token, so under the causal mask no real token
    attends to it, and it carries no label; the loss and every gradient are those of the masked batch. Without
    a mask transformers takes SDPA's causal path, the step the cost model traces; with one it builds a
    ``B x 1 x S x S`` mask and, on models with fewer key-value heads than heads, expands K and V in every layer
    (``repeat_kv``: measured +141,824 B on a 4-layer hidden-64 Llama at 1 x 64)."""
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    for batch in batches:
        out = {}
        for key, t in batch.items():
            if key not in fill:
                continue
            if t.shape[1] >= seq_len:
                out[key] = t[:, :seq_len]
            else:
                pad = torch.full((t.shape[0], seq_len - t.shape[1]), fill[key], dtype=t.dtype)
                out[key] = torch.cat([t, pad], dim=1)
        yield out


class _Endless:
    """An endless batch generator as a re-iterable: the layer-wise loop keeps every batch of a one-shot iterator
    (to replay it should it end); this one never ends, so nothing needs keeping."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def thin(history: list, limit: int = MAX_HISTORY) -> list:
    """At most ``limit`` entries, evenly spaced, first and last kept."""
    if len(history) <= limit:
        return list(history)
    step = (len(history) - 1) / (limit - 1)
    return [history[round(i * step)] for i in range(limit)]


def _jsonable(entry) -> dict:
    """A sampler history entry as plain JSON types (storage keeps user_attrs as JSON)."""
    if not isinstance(entry, dict):
        entry = dict(getattr(entry, "__dict__", {}))
    out = {}
    for key, value in entry.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, (tuple, set)):
            value = list(value)
        if isinstance(value, list):
            value = [float(v) if isinstance(v, float) else (int(v) if isinstance(v, int) else v) for v in value]
        out[str(key)] = value
    return out


def add_lora(model, rank: int):
    """Rank-``rank`` LoRA adapters on every linear layer inside the decoder layers (peft)."""
    # peft (transformers, seconds on top of torch): deferred to an adapter trial
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, config)


def _build(workload, params: TrialParams, shape: TrainShape, seed: int):
    model = workload.new_model(seed)
    if shape.dtype != "float32":
        # the weights in the training dtype; buffers as transformers keeps them (RoPE's inverse frequencies stay
        # float32, as in a model built in that dtype): model.to() would round them too
        dtype = DTYPES[shape.dtype]
        for p in model.parameters():
            p.data = p.data.to(dtype)
    if params.gradient_checkpointing:
        # transformers' default (non-reentrant), as the cost model's measured step enables it
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    fields = dict(params.levers)
    # a static set's layers below L - γ never train (planner.sampling Scorer.static); adapters: none does
    frozen_below = None if params.adapter_rank else len(find_decoder_layers(model)[1]) - params.active_layers
    for lever in all_levers():
        model = lever.proxy_model(model, fields, frozen_below)
    if params.adapter_rank:
        model = add_lora(model, params.adapter_rank)
    return model.to(torch.device(shape.device))


# lever hooks a proxy run does not execute as the costed step does: the layer-wise loop calls no step hook (the step
# in backward, offloading), trains on its own batches (right-padded, without a mask: shaped_batches), and a lever's
# proxy_model stands in for its effect on learning in float (quantized weights as their round trip)
UNRUN_HOOKS = ("install", "forward_context", "batch", "proxy_model")


def ran_form(cfg):
    """``cfg`` as a proxy run of the target executes it, and the names of the levers it leaves off (:data:`UNRUN_HOOKS`):
    their fields at their defaults; what is learned is the same (or simulated), the memory is not."""
    unrun = [
        lever
        for lever in all_levers()
        if lever.active(cfg) and any(getattr(type(lever), hook) is not getattr(Lever, hook) for hook in UNRUN_HOOKS)
    ]
    update = {name: spec[1].default for lever in unrun for name, spec in lever.fields.items()}
    return cfg.model_copy(update=update), [lever.name for lever in unrun]


def _lever_loss(params: TrialParams):
    """The loss a point's levers compute (the chunked cross-entropy where the target trains as its own proxy;
    other proxies never carry memory-only levers), or None for the model's own. The step in backward is not
    run by the layer-wise loop: a proxy steps after backward (the same update)."""
    if not params.levers:
        return None
    cfg = TrainConfig.model_construct(**dict(params.levers))
    if not any(lever.active(cfg) and type(lever).compute_loss is not Lever.compute_loss for lever in all_levers()):
        return None
    return lambda model, batch: compute_loss(model, batch, cfg)


def _optimizer_class(name: str):
    """The optimizer a proxy run steps with: the registered strategy's class (bitsandbytes' 8-bit ones run on CPU)."""
    strategy = get_optimizer(name)
    return lambda params, lr: strategy.build(params, lr)


def lr_scheduler(optimizer, schedule: str, steps: int):
    """The proxy's learning-rate schedule over ``steps`` optimizer steps (None: constant)."""
    if schedule not in SCHEDULES:
        raise PlannerError(f"schedule must be one of {list(SCHEDULES)}, but got {schedule!r}")
    if schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / steps))


def run_proxy(
    workload,
    params: TrialParams,
    *,
    batch_size: int,
    steps: int,
    eval_every: int,
    seed: int = 0,
    on_eval: Callable[[int, float], None] | None = None,
    shape: TrainShape | None = None,
    schedule: str = DEFAULT_SCHEDULE,
) -> ProxyResult:
    """Train ``params`` for ``steps`` steps with the layer-wise sampler; return the held-out metric.

    ``on_eval(step, value)`` sees every intermediate evaluation (a pruner may raise from it).
    ``shape`` says where and how (default: CPU, float32, the workload's own sequence lengths);
    ``schedule`` how the learning rate ``params.lr`` evolves (:data:`SCHEDULES`).
    Raises ``planner.sampling.DivergedError`` when the loss goes NaN, :class:`ProxyOutOfMemory`
    when the device runs out of memory.
    """
    shape = shape or TrainShape()
    cuda = shape.device == "cuda"
    meter = CudaMeter() if cuda else None
    evaluations: list[tuple[int, float]] = []

    def _on_eval(step: int, value: float) -> None:
        evaluations.append((int(step), float(value)))
        if on_eval is not None:
            on_eval(int(step), float(value))

    cpu_meter = CpuMeter() if shape.measure and not cuda else None

    def _evaluate(model) -> float:
        if meter is not None:
            meter.take()
        try:
            if cpu_meter is not None:
                with cpu_meter.tracker.suspended():
                    return workload.evaluate(model)
            return workload.evaluate(model)
        finally:
            if meter is not None:
                meter.after_eval()

    batches = _Endless(workload.train_batches(batch_size, seed))
    if shape.seq_len:
        batches = _Endless(shaped_batches(batches, shape.seq_len, workload.pad_id))
    autocast = (
        torch.autocast(shape.device, dtype=torch.bfloat16 if shape.amp == "bf16" else torch.float16)
        if shape.amp != "none"
        else contextlib.nullcontext()
    )

    def _train():
        # everything that holds the model lives in this frame only: gone when it returns
        model = _build(workload, params, shape, seed)
        sampler = LayerSampler(
            model,
            active_layers=params.active_layers,
            period=params.period,
            scorer=params.scorer,
            scorer_options={},
            train_embeddings=params.train_embeddings,
            train_head=params.train_head,
            min_depth=params.min_depth,
            seed=seed,
        )
        optimizer = sampler.make_optimizer(
            _optimizer_class(dict(params.levers).get("optimizer", shape.optimizer)), lr=params.lr
        )
        observing: contextlib.AbstractContextManager = contextlib.nullcontext()
        stream, on_step = batches, None
        if cpu_meter is not None:
            cpu_meter.attach(model, sampler, optimizer)
            observing, stream = cpu_meter.observing(), _Endless(cpu_meter.batches(batches))
            on_step = cpu_meter.on_step
        with autocast:
            with observing:
                result = train_layerwise(
                    model,
                    stream,
                    sampler=sampler,
                    optimizer=optimizer,
                    steps=steps,
                    eval_fn=_evaluate,
                    eval_every=eval_every,
                    on_eval=_on_eval,
                    on_step=on_step,
                    lr_scheduler=lr_scheduler(optimizer, schedule, steps),
                    loss_fn=_lever_loss(params),
                )
            if meter is not None:
                meter.take()
            metric = (
                evaluations[-1][1] if evaluations and evaluations[-1][0] >= steps else float(workload.evaluate(model))
            )
            secondary = getattr(workload, "secondary", None)
            return metric, result.history, (secondary(model) if secondary is not None else {})

    start = perf_counter()
    oom = None
    try:
        metric, history, secondary = _train()
    except torch.OutOfMemoryError as exc:
        oom = (str(exc).strip().splitlines() or [""])[0][:200]
    finally:
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
    if oom is not None:
        raise ProxyOutOfMemory(f"out of memory on {shape.device} ({oom})", meter.free_before if meter else 0)
    seconds = perf_counter() - start
    history = [_jsonable(h) for h in thin(list(history or []))]
    memory = meter.result() if meter is not None else cpu_meter.result() if cpu_meter is not None else None
    return ProxyResult(
        float(metric), history, seconds, evaluations, memory, {k: float(v) for k, v in secondary.items()}
    )
