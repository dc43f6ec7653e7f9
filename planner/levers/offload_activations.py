"""Activation offloading (torchtune's ``OffloadActivations``, ``torchtune/training/_activation_offloading.py``;
the same class in TRL, ``trl/models/activation_offloading.py``, behind axolotl's ``activation_offloading``).

A ``saved_tensors_hooks`` pair around the model's forward: every tensor autograd saves that is at least
``MIN_OFFLOAD_BYTES`` and is not a parameter moves to pinned host memory when it is saved and is copied
back to the device when backward unpacks it. Under gradient checkpointing (required here) what is saved
outside the checkpointed layers is each layer's input (non-reentrant ``checkpoint`` saves its inputs with
``_NoopSaveInputs``), the final norm's saves, the loss's saves where the model computes its loss in its
forward (transformers with labels, as the HF Trainer and axolotl run it; torchtune computes it outside the
context) and, when the embeddings train, the token ids: those leave the device in forward and come back, one
at a time, when backward reaches them. The output projection runs under a no-op hook (``NoOpManager`` on the
output layer, ``get_act_offloading_ctx_manager``): its saves stay.

Modelled: the synchronous form (``use_streams=False``), exact on CPU. The streamed form (the default of both
libraries) keeps each offloaded tensor alive on the device until ``max_fwd_stash_size`` (5) later saves
and every unpacked one until the next autograd node finishes: at most 5 more saved tensors in forward and
one more layer input in backward than the estimate counts (documented in docs/levers.md). TRL's copy also
keeps a tensor on the device when its address was already offloaded in the same forward (the caching
allocator reuses addresses), which no CPU trace can see.

On CUDA the host copy is pinned memory outside PyTorch's allocator; on CPU (the cost model's traces and
their measured truth) the host copy is a NumPy array, which the CPU allocator's counters and the profiler's
memory events do not see either, and under ``FakeTensorMode`` only its shape is kept.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import Field

from planner.levers.base import ExportItems, Flag, Lever, causal_lm, is_fake, register_lever

MIN_OFFLOAD_BYTES = 1024  # OffloadActivations(min_offload_size=1024): smaller saves stay on the device


class _HostCopy:
    """One offloaded tensor: its bytes off the device, and how to rebuild it there."""

    __slots__ = ("data", "shape", "stride", "offset", "dtype", "device", "fake")
    data: Any  # pinned host memory (a tensor) for a CUDA tensor, a NumPy array for a CPU one, None under FakeTensorMode

    def __init__(self, t):
        import torch  # deferred: every lever module is imported with the config, before torch is needed

        self.shape, self.stride, self.offset = t.shape, t.stride(), t.storage_offset()
        self.dtype, self.device = t.dtype, t.device
        self.fake = is_fake(t)
        if self.fake:
            self.data = None
        elif t.device.type == "cpu":
            # bytes outside torch's allocator, like pinned host memory is outside the CUDA allocator
            self.data = t.detach().contiguous().view(torch.uint8).numpy().copy()
            self.stride, self.offset = None, 0
        else:
            self.data = torch.empty_like(t, device="cpu", pin_memory=True).copy_(t)

    def restore(self):
        # torch: deferred, the config (and so 'planner --help') imports every lever
        import torch

        if self.fake:
            return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)
        if self.device.type == "cpu":
            return torch.from_numpy(self.data).clone().view(self.dtype).view(self.shape)
        return self.data.to(self.device)


class OffloadContext:
    """The hooks of one training step: enter around the forward (and loss), leave before backward."""

    def __init__(self, model):
        # torch: deferred, the config (and so 'planner --help') imports every lever
        import torch

        self._params = {p.untyped_storage()._cdata for p in model.parameters() if not is_fake(p)}
        self._param_ids = {id(p) for p in model.parameters()}
        self._enabled = True
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        head = causal_lm(model).get_output_embeddings()
        self._handles = (
            [head.register_forward_pre_hook(self._off), head.register_forward_hook(self._on)]
            if head is not None
            else []
        )

    def _off(self, *args):
        self._enabled = False

    def _on(self, *args):
        self._enabled = True

    def _pack(self, t):
        if (
            not self._enabled
            or t.numel() * t.element_size() < MIN_OFFLOAD_BYTES
            or id(t) in self._param_ids
            or (not is_fake(t) and t.untyped_storage()._cdata in self._params)
        ):
            return t
        return _HostCopy(t)

    @staticmethod
    def _unpack(saved):
        return saved.restore() if isinstance(saved, _HostCopy) else saved

    def __enter__(self):
        self._enabled = True
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        for h in self._handles:
            h.remove()
        return False


@register_lever
class OffloadActivations(Lever):
    name = "offload_activations"
    order = 85
    in_shape = True
    fields = {
        "offload_activations": (
            bool,
            Field(
                False,
                description="keep what autograd saves outside the "
                "checkpointed layers (their inputs) in pinned host memory until "
                "backward needs it (torchtune's OffloadActivations); needs "
                "gradient checkpointing",
            ),
        )
    }
    flag = Flag(
        "--offload-activations",
        "offload_activations",
        "move each checkpointed layer's saved input to pinned "
        "host memory until its backward (torchtune's OffloadActivations; needs --gradient-checkpointing)",
        kind="bool",
    )

    def active(self, cfg) -> bool:
        return cfg.offload_activations

    def problems(self, cfg) -> list[str]:
        if cfg.offload_activations and not cfg.gradient_checkpointing:
            return [
                "`offload_activations` needs `gradient_checkpointing` (it offloads the checkpointed layers' "
                "inputs), but got offload_activations=True with gradient_checkpointing=False"
            ]
        return []

    def label(self, cfg):
        return "activations offloaded" if cfg.offload_activations else None

    def forward_context(self, model, cfg):
        return OffloadContext(model) if cfg.offload_activations else contextlib.nullcontext()

    def export(self, target, cfg, layers_attribute="model.layers"):
        if not cfg.offload_activations or target == "planner":
            return ExportItems()
        if target == "axolotl":
            # axolotl wraps the step in TRL's OffloadActivations with streams on
            return ExportItems(
                {"activation_offloading": True},
                lost=[
                    "axolotl offloads on a second CUDA stream: up to 5 offloaded tensors (layer inputs) stay on the device "
                    "in forward and one copied-back input in backward beyond the plan's estimate (the synchronous form)"
                ],
            )
        return ExportItems(
            lost=[
                f"activation offloading (torchtune's OffloadActivations): {target} keeps every "
                "checkpointed layer's input on the device"
            ]
        )
