"""The optimizer step fused into backward (torchtune's ``optimizer_in_bwd``).

One optimizer per trainable parameter; ``register_post_accumulate_grad_hook`` runs its step as
soon as the parameter's gradient is complete and frees the gradient, so no full set of gradients
exists at once: the peak holds at most the gradients backward is still writing, plus one
parameter's step temporaries (torchtune ``training/_optimizer_in_bwd`` / ``OptimizerInBackwardWrapper``).
A step per micro-batch: it cannot accumulate gradients. It only lowers memory, so the search does not
sample it: a sampled plan over budget as it is takes it first (``fit_value``, ``planner.tune.search.forms``)
where ``--optimizer-in-backward``/``--no-optimizer-in-backward`` was not given.
"""

from __future__ import annotations

from pydantic import Field

from planner.levers.base import ExportItems, Flag, Lever, register_lever


class InBackwardOptimizer:
    """The optimizers of every parameter as one object: ``step``/``zero_grad`` are done inside backward."""

    def __init__(self, per_param: dict):
        self.per_param = per_param

    @property
    def state(self) -> dict:
        return {p: st for opt in self.per_param.values() for p, st in opt.state.items()}

    def step(self):  # the hooks stepped every parameter already
        pass

    def zero_grad(self, set_to_none: bool = True):
        pass


class SteppedInBackward:
    """An optimizer strategy whose step runs inside backward: the same state, no step after backward
    (its temporaries are traced inside each layer's backward, per parameter)."""

    def __init__(self, strategy):
        self.inner = strategy
        self.name, self.paged = strategy.name, strategy.paged

    # one optimizer per parameter: whatever an optimizer keeps once (bitsandbytes' quantization maps), each keeps
    def state_bytes(self, tensors, device, block=None):
        return sum(self.inner.state_bytes([t], device, *([block] if block else [])) for t in tensors)

    def state_blocks(self, tensors):
        return [b for t in tensors for b in self.inner.state_blocks([t])]

    def step_peak(self, tensors, device, block=None):
        return 0

    def step_blocks(self, tensors):
        return []


@register_lever
class OptimizerInBackward(Lever):
    name = "optimizer_in_backward"
    order = 80
    in_shape = True
    fields = {
        "optimizer_in_backward": (
            bool,
            Field(
                False,
                description="run each parameter's optimizer step as its "
                "gradient is accumulated, then free the gradient",
            ),
        )
    }
    flag = Flag(
        "--optimizer-in-backward",
        "optimizer_in_backward",
        "each parameter's optimizer step runs in backward "
        "as its gradient is ready; no full set of gradients exists at once (torchtune's optimizer_in_bwd)",
        kind="bool",
    )
    optimizer_in_trace = True
    fit_value = True

    def active(self, cfg) -> bool:
        return cfg.optimizer_in_backward

    def label(self, cfg):
        return "step in backward" if cfg.optimizer_in_backward else None

    def optimizer_strategy(self, strategy, cfg):
        return SteppedInBackward(strategy)

    def install(self, model, cfg, build_optimizer):
        per_param = {p: build_optimizer([p]) for p in model.parameters() if p.requires_grad}

        def step(param):
            opt = per_param[param]
            opt.step()
            opt.zero_grad(set_to_none=True)

        for p in per_param:
            p.register_post_accumulate_grad_hook(step)
        return InBackwardOptimizer(per_param)

    def export(self, target, cfg, layers_attribute="model.layers"):
        if not cfg.optimizer_in_backward:
            return ExportItems()
        if target == "planner":
            return ExportItems()
        return ExportItems(
            lost=[
                f"the optimizer step in backward (torchtune's optimizer_in_bwd): {target} steps after "
                "the whole backward, so every trainable gradient is held at once"
            ]
        )
