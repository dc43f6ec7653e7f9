"""Trace one training step of a reduced-depth model and record its memory events.

The reduced model has the full model's width and 2-3 decoder layers whose roles cover every
role the full configuration needs. Roles of a decoder layer:

- ``T``  trainable, its input needs a gradient (something below trains);
- ``T0`` trainable and the lowest point that needs a gradient (embeddings frozen);
- ``FA`` frozen, above the lowest grad-needing point (keeps what its input gradient needs);
- ``FB`` frozen, below it (keeps nothing, has no backward).

The events are cut into segments per layer role by :mod:`planner.cost.segments`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from planner.cost.events import templates
from planner.cost.kernels import cuda_kernels
from planner.cost.boundaries import Boundaries
from planner.cost.measure import (
    compute_loss,
    lever_batch,
    make_batch,
    make_optimizer,
    prepare_model,
    state_tensors,
    training_step,
)
from planner.cost.segments import TraceResult, cut_segments
from planner.cost.tracker import LiveBytesTracker
from planner.spec import build_model
from planner.spec.parts import model_parts
from planner.levers import active_levers
from planner.levers.quantize import quant_state_tensors, settle


def trainable_for_roles(roles: list[str]) -> list[int]:
    return [i for i, r in enumerate(roles) if r in ("T", "T0")]


def run_trace(spec, roles: list[str], cfg, *, fake: bool = False, kernels: str = "cpu") -> TraceResult:
    """Trace forward and backward of one step of ``spec`` reduced to ``len(roles)`` layers, trained as
    ``cfg`` says (its trainable set is the roles'; see :func:`planner.cost.family.trace_config`).

    ``kernels="cuda"``: attention and dropout keep what their CUDA kernels keep
    (planner.cost.kernels); ``"cpu"``: what the CPU kernels keep. Where a lever runs the optimizer
    inside backward, a first untraced step creates the reduced model's optimizer state, as the
    second step of a real run finds it."""
    layers = trainable_for_roles(roles)
    in_backward = any(lever.optimizer_in_trace for lever in active_levers(cfg))
    mode = FakeTensorMode(allow_non_fake_inputs=False) if fake else contextlib.nullcontext()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with mode:
            model = build_model(spec, dtype=cfg.dtype, num_layers=len(roles))
            model = prepare_model(model, cfg, layers)
            batch = (
                make_batch(spec.vocab_size, cfg.batch_size, cfg.seq_len)
                if not fake
                else _fake_batch(spec, cfg.batch_size, cfg.seq_len)
            )
            batch = lever_batch(batch, cfg)
            optimizer = make_optimizer(model, cfg, foreach=kernels == "cuda", shadow=fake) if in_backward else None
            if optimizer is not None:
                with _unpacked_batch(fake):
                    training_step(model, optimizer, batch, cfg)
            elif cfg.quantize is not None:  # the measured step is the second: its quantized linears are settled
                with _unpacked_batch(fake):
                    settle(functools.partial(compute_loss, model, batch, cfg))
            tracker = LiveBytesTracker(record=True)
            marks = Boundaries(model, tracker)
            with tracker:
                tracker.track(state_tensors(model, optimizer, batch))
                base = tracker.current_bytes
                tracker.reset_peak()
                with cuda_kernels(kernels == "cuda"), _unpacked_batch(fake):
                    training_step(model, optimizer, batch, cfg, marks, run_optimizer=False)
            marks.remove()
            ids = (tracker.alloc_id(p.grad) for p in model.parameters() if p.grad is not None)
            grads = {aid for aid in ids if aid is not None}
            result = cut_segments(tracker, roles, grads, marks.input_ids, marks.last_output)
            result.events = templates(tracker.events, tracker.marks, roles, marks.input_ids, marks.last_output, grads)
            result.base_bytes = base
            result.params = param_info(model, layers)
            result.peak_bytes = tracker.peak_bytes
            del model, batch, optimizer
    finally:
        if was_enabled:
            gc.enable()
    _check_roles(result, roles, spec)
    return result


@contextlib.contextmanager
def _unpacked_batch(fake: bool):
    """transformers looks for packed sequences in ``position_ids`` and, seeing a FakeTensor, cannot read
    the answer, so it builds an explicit causal mask (which changes the attention kernel): here the
    batch is one sequence per row, as the real check finds."""
    try:
        from transformers import masking_utils  # transformers: deferred (seconds on top of torch); old ones lack it
    except ImportError:  # pragma: no cover
        original = None
    else:
        original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if not fake or original is None:
        yield
        return

    def unpacked(*args, **kwargs):
        original(*args, **kwargs)  # the same temporaries as the real check
        return None

    masking_utils.find_packed_sequence_indices = unpacked
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def param_info(model, trained: list[int] | None = None) -> dict:
    """Tensor sizes of one trained and one frozen decoder layer, the embeddings and the head:
    ``[numel, bytes/element(, is_lora)]``. The two layers differ where a lever stores frozen weights
    otherwise (quantization); ``frozen_layer`` is absent when the traced model has no frozen layer."""
    parts = model_parts(model)
    trained = list(trained or [])
    frozen = [i for i in range(len(parts.layers)) if i not in trained]

    # tensors bitsandbytes keeps beside quantized weights: per layer, unless every layer shares one (a code map)
    seen: dict[int, int] = {}
    for layer in parts.layers:
        for t in {t.untyped_storage()._cdata: t for t in quant_state_tensors(layer)}.values():
            seen[t.untyped_storage()._cdata] = seen.get(t.untyped_storage()._cdata, 0) + 1

    def layer_info(i):
        out = [[p.numel(), p.element_size(), "lora_" in name] for name, p in parts.layers[i].named_parameters()]
        quant = {t.untyped_storage()._cdata: t for t in quant_state_tensors(parts.layers[i])}
        return out + [[t.untyped_storage().nbytes(), 1, False] for key, t in quant.items() if seen[key] == 1]

    layer_buffers = sum(b.numel() * b.element_size() for b in parts.layers[0].buffers())
    all_buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    shared_quant = {
        t.untyped_storage()._cdata: t
        for layer in parts.layers
        for t in quant_state_tensors(layer)
        if seen[t.untyped_storage()._cdata] > 1
    }
    all_buffers += sum(t.untyped_storage().nbytes() for t in shared_quant.values())
    tied_ids = {id(p) for p in parts.tied}
    out = {
        "layer": layer_info(trained[0] if trained else 0),
        "layer_buffers": layer_buffers,
        "other_buffers": all_buffers - len(parts.layers) * layer_buffers,
        "embeddings": [[p.numel(), p.element_size(), id(p) in tied_ids] for p in parts.embeddings],
        "head": [[p.numel(), p.element_size()] for p in parts.head],
    }
    if frozen:
        out["frozen_layer"] = layer_info(frozen[0])
    return out


def _fake_batch(spec, batch_size, seq_len):
    ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len))
    return {"input_ids": ids, "labels": ids.clone()}


def _check_roles(result: TraceResult, roles, spec):
    """The traced step must have the structure the roles promise (a backward segment per non-FB layer)."""
    for i, r in enumerate(roles):
        has_bwd = "bwd" in result.layer_by_index[i]
        if has_bwd != (r != "FB"):
            raise RuntimeError(
                f"trace of {spec.name}: layer {i} was traced as role {r} but "
                f"{'has' if has_bwd else 'has no'} backward segment (roles={roles})"
            )


def fingerprint(spec) -> str:
    """A key for everything in the model config that changes a trace (depth excluded)."""
    data = spec.config.to_dict()
    for k in (
        "num_hidden_layers",
        "n_layer",
        "layer_types",
        "_name_or_path",
        "transformers_version",
        "architectures",
        "torch_dtype",
        "dtype",
        "use_cache",
    ):
        data.pop(k, None)
    return json.dumps(data, sort_keys=True, default=str)
