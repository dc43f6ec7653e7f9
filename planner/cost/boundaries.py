"""Where a traced training step's segments begin: module and gradient hooks that mark the tracker's events.

Marks, in step order: ``fwd:embed``, ``fwd:<i>`` before each decoder layer (pre-hook), ``fwd:head``
at the first module after the layers, ``bwd:head`` when the backward starts, ``bwd:<i>`` when the
gradient of layer i's output arrives, ``bwd:embed`` when the gradient of the first layer's input
arrives, ``bwd:end`` and ``end``. :mod:`planner.cost.segments` cuts the event stream at them.
"""

from __future__ import annotations

import torch

from planner.cost.measure import StepHooks
from planner.cost.tracker import LiveBytesTracker
from planner.spec.parts import model_parts


class Boundaries(StepHooks):
    """Module and tensor hooks that mark segment boundaries in the tracker's event stream."""

    def __init__(self, model, tracker: LiveBytesTracker):
        self.t = tracker
        self.phase = "idle"
        self.layers = model_parts(model).layers
        self.n = len(self.layers)
        self.input_ids: dict[int, int | None] = {}
        self.last_output: int | None = None
        self.after_layers = False
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._post(i), with_kwargs=True))
        inside = {id(m) for layer in self.layers for m in layer.modules()}
        ancestors = {id(m) for m in model.modules() if any(sub is self.layers for sub in m.modules())}
        for m in model.modules():
            if id(m) not in inside and id(m) not in ancestors and m is not self.layers:
                self.handles.append(m.register_forward_pre_hook(self._outside))

    @staticmethod
    def _first_tensor(args, kwargs):
        for a in list(args) + [kwargs.get("hidden_states")]:
            if isinstance(a, torch.Tensor):
                return a
            if isinstance(a, (tuple, list)) and a and isinstance(a[0], torch.Tensor):
                return a[0]
        return None

    def _pre(self, i):
        def hook(module, args, kwargs):
            if self.phase != "fwd":
                return
            self.t.mark(f"fwd:{i}")
            x = self._first_tensor(args, kwargs)
            self.input_ids[i] = self.t.alloc_id(x) if x is not None else None
            if i == 0 and x is not None and x.requires_grad:
                x.register_hook(self._grad_mark("bwd:embed"))

        return hook

    def _post(self, i):
        def hook(module, args, kwargs, out):
            if self.phase != "fwd":
                return
            y = self._first_tensor((out,), {})
            if i == self.n - 1 and y is not None:
                self.last_output = self.t.alloc_id(y)
            if y is not None and y.requires_grad:
                y.register_hook(self._grad_mark(f"bwd:{i}"))
            if i == self.n - 1:
                self.after_layers = True

        return hook

    def _outside(self, module, args):
        if self.phase == "fwd" and self.after_layers:
            self.after_layers = False
            self.t.mark("fwd:head")

    def _grad_mark(self, label):
        def hook(grad):
            self.t.mark(label)

        return hook

    def step_start(self):
        self.phase = "fwd"
        self.t.mark("fwd:embed")

    def backward_start(self):
        self.phase = "bwd"
        self.t.mark("bwd:head")

    def backward_end(self):
        self.phase = "post"
        self.t.mark("bwd:end")

    def step_end(self):
        self.t.mark("end")

    def remove(self):
        for h in self.handles:
            h.remove()
