"""Measured truth: real training steps on CPU, peak of live tensor bytes during the last step.

The step is the one the HF Trainer runs: forward under autocast when ``amp`` is set (fp32
weights and state), loss from the model (``use_cache=False``; the output object, logits
included, is dropped before backward), ``loss.backward()``, ``optimizer.step()``,
``optimizer.zero_grad(set_to_none=True)``.
"""

from __future__ import annotations

import contextlib
import gc

import torch
from torch import nn

from planner.config import TrainConfig
from planner.errors import PlannerError
from planner.cost.tracker import LiveBytesTracker
from planner.cost.trainable import add_lora, apply_trainable
from planner.levers import active_levers
from planner.levers.quantize import quant_state_tensors
from planner.optimizers import get_optimizer
from planner.spec import find_decoder_layers

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
LEARNING_RATE = 1e-4  # memory does not depend on it


def prepare_model(model: nn.Module, cfg: TrainConfig, layers: list[int]) -> nn.Module:
    """Apply the levers (checkpointing, quantization, ...), LoRA and the trainable set; returns the model to train."""
    levers = active_levers(cfg)
    for lever in levers:
        model = lever.prepare(model, cfg, layers)
    if cfg.lora_rank:
        model = add_lora(model, cfg.lora_rank, select=lambda names: _lora_targets(levers, cfg, names))
    apply_trainable(
        model, layers, train_embeddings=cfg.train_embeddings, train_head=cfg.train_head, lora=bool(cfg.lora_rank)
    )
    if not any(p.requires_grad for p in model.parameters()):
        raise PlannerError(
            f"a training config must train something, but layers={layers}, "
            f"train_embeddings={cfg.train_embeddings}, train_head={cfg.train_head}"
        )
    model.train()
    return model


def _lora_targets(levers, cfg, names: list[str]) -> list[str]:
    for lever in levers:
        names = lever.lora_targets(cfg, names)
    return names


def make_optimizer(model: nn.Module, cfg: TrainConfig, *, foreach: bool | None = None, shadow: bool = False):
    """The optimizer that runs for ``cfg`` (single-tensor loop on CPU unless ``foreach``); a lever may
    take over the step (the step in backward), returning an object with the same interface.
    ``shadow``: a stand-in that only allocates the step's temporaries (traces under FakeTensorMode)."""
    strategy = get_optimizer(cfg.optimizer)

    def build(params):
        if shadow:
            return strategy.shadow(params, foreach=foreach)
        return strategy.build(params, LEARNING_RATE, foreach=foreach)

    for lever in active_levers(cfg):
        if (taken := lever.install(model, cfg, build)) is not None:
            return taken
    return build([p for p in model.parameters() if p.requires_grad])


class StepHooks:
    """Callbacks at the boundaries of a training step (no-ops by default)."""

    def step_start(self): ...
    def backward_start(self): ...
    def backward_end(self): ...
    def optimizer_start(self): ...
    def zero_grad_start(self): ...
    def step_end(self): ...


def compute_loss(model: nn.Module, batch: dict, cfg: TrainConfig | None = None):
    """The step's loss: the model's own (``use_cache=False``; the output object is dropped at once), or a lever's."""
    for lever in active_levers(cfg) if cfg is not None else ():
        if (loss := lever.compute_loss(model, batch, cfg)) is not None:
            return loss
    return model(
        input_ids=batch["input_ids"],
        labels=batch["labels"],
        attention_mask=batch.get("attention_mask"),
        use_cache=False,
    ).loss


def training_step(
    model: nn.Module,
    optimizer,
    batch: dict,
    cfg: TrainConfig | None = None,
    hooks: StepHooks | None = None,
    *,
    run_optimizer: bool = True,
) -> None:
    """One training step as the HF Trainer runs it, shaped by ``cfg``'s amp and levers (None: plain)."""
    amp = cfg.amp if cfg is not None else "none"
    hooks = hooks or StepHooks()
    hooks.step_start()
    with contextlib.ExitStack() as stack:
        if amp != "none":
            stack.enter_context(torch.autocast("cpu", dtype=AMP_DTYPES[amp]))
        for lever in active_levers(cfg) if cfg is not None else ():
            stack.enter_context(lever.forward_context(model, cfg))
        loss = compute_loss(model, batch, cfg)
    hooks.backward_start()
    loss.backward()
    hooks.backward_end()
    if run_optimizer:
        hooks.optimizer_start()
        optimizer.step()
        hooks.zero_grad_start()
        optimizer.zero_grad(set_to_none=True)
    hooks.step_end()


def make_batch(vocab_size: int, batch_size: int, seq_len: int, *, seed: int = 0) -> dict:
    """Random token ids; labels are the ids (the model shifts them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def lever_batch(batch: dict, cfg: TrainConfig) -> dict:
    """``batch`` as a trainer hands it to the step under ``cfg``'s levers (a padded batch carries its mask)."""
    for lever in active_levers(cfg):
        batch = lever.batch(batch, cfg)
    return batch


def batch_tensors(cfg: TrainConfig) -> int:
    """How many (batch, seq_len) int64 tensors a batch holds under ``cfg``: token ids, labels, and the levers'."""
    return 2 + sum(len(lever.batch_keys) for lever in active_levers(cfg))


def state_tensors(model: nn.Module, optimizer=None, batch: dict | None = None) -> list[torch.Tensor]:
    """Every tensor that lives across steps: parameters, buffers, optimizer state, the batch."""
    out = list(model.parameters()) + list(model.buffers()) + quant_state_tensors(model)
    # bitsandbytes' quantization maps, made when each optimizer is built (one per parameter in backward)
    for opt in list(getattr(optimizer, "per_param", {}).values()) or [optimizer]:
        out += [t for t in getattr(opt, "name2qmap", {}).values() if isinstance(t, torch.Tensor)]
    if optimizer is not None:
        for st in optimizer.state.values():
            out += [v for v in st.values() if isinstance(v, torch.Tensor)]
    if batch is not None:
        out += [v for v in batch.values() if isinstance(v, torch.Tensor)]
    return out


def measure_training_peak(
    model: nn.Module,
    cfg: TrainConfig,
    batch: dict | torch.Tensor,
    steps: int = 2,
    *,
    layers: list[int] | None = None,
    foreach: bool | None = None,
) -> int:
    """Peak live tensor bytes during the last of ``steps`` real training steps on CPU.

    ``model`` is built in ``cfg.dtype``; this applies ``cfg`` (trainable set, LoRA, gradient
    checkpointing) to it. ``layers`` overrides the trainable set (required for ``active_layers``
    configs: pass the draw to measure). ``foreach=True`` runs the multi-tensor optimizer CUDA
    uses (its temporaries are the same list of tensors on CPU). Weights, optimizer state and the
    batch count.
    """
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch, "labels": batch}
    batch = lever_batch(batch, cfg)
    if steps < 1:
        raise PlannerError(f"`steps >= 1` must hold, but got steps={steps}")
    num_layers = len(find_decoder_layers(model)[1])
    if layers is None:
        if cfg.active_layers is not None:
            raise PlannerError(
                "measure_training_peak needs `layers` for an active_layers config (which draw to measure)"
            )
        cfg.check_against(num_layers)
        layers = cfg.trainable_layers(num_layers)
    model = prepare_model(model, cfg, layers)
    optimizer = make_optimizer(model, cfg, foreach=foreach)
    was_enabled = gc.isenabled()
    gc.disable()  # frees happen by refcount, deterministically
    try:
        with LiveBytesTracker() as tracker:
            tracker.track(state_tensors(model, optimizer, batch))
            for i in range(steps):
                if i == steps - 1:
                    tracker.reset_peak()
                training_step(model, optimizer, batch, cfg)
            return tracker.peak_bytes
    finally:
        if was_enabled:
            gc.enable()
