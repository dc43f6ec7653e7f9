"""Where a causal LM keeps its decoder layers, detected from the module tree, never assumed."""

from __future__ import annotations

from torch import nn

from planner.errors import PlannerError


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (``PeftModel.get_base_model()``), or ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)  # peft's PeftModel
    return get_base() if callable(get_base) else model


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(path, layers)`` of the decoder-layer ModuleList (``model.layers``, ``transformer.h``, ...).

    The path is relative to the module given (a ``*ForCausalLM``, or a peft wrapper of one:
    then the path is relative to the wrapped transformers model). The decoder stack is the
    longest ``ModuleList`` whose children all share one class.
    """
    base = unwrap_peft(model)
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        if (
            best is None
            or len(module) > len(best[1])
            or (len(module) == len(best[1]) and name.count(".") < best[0].count("."))
        ):
            best = (name, module)
    if best is None:
        raise PlannerError(
            f"model {type(model).__name__} must hold its decoder layers in a torch.nn.ModuleList, but none was found"
        )
    return best


def layers_attribute(model: nn.Module) -> str:
    """Dotted path of the decoder layers relative to the causal-LM module, e.g. ``model.layers``."""
    return find_decoder_layers(model)[0]
