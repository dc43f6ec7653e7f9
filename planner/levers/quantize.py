"""Frozen linear weights stored by bitsandbytes, as transformers loads them with ``BitsAndBytesConfig``.

- ``nf4``: ``load_in_4bit=True, bnb_4bit_quant_type="nf4"``: ``Linear4bit``; the weight is packed
  two 4-bit codes per byte (``numel/2`` uint8) with one float32 absmax per 64 weights
  (``bitsandbytes/functional.py: quantize_4bit``, 0.50);
- ``nf4-dq``: the same with ``bnb_4bit_use_double_quant=True``: the absmax are themselves quantized
  to uint8 in blocks of 256 (one float32 absmax each, plus a mean offset);
- ``int8``: ``load_in_8bit=True`` (LLM.int8): ``Linear8bitLt``, one int8 per weight and one float32
  scale per output row.

The compute dtype is the model's (``bnb_4bit_compute_dtype``); forward and backward dequantize
each weight for its matmul. Then peft's ``prepare_model_for_kbit_training`` casts every other
float16/bfloat16 parameter (embeddings, norms, head, biases) to float32; its gradient
checkpointing is the checkpointing lever's to decide. Which weights: every linear module of the
frozen decoder layers (all of them under LoRA, whose base weights are frozen everywhere); the
head stays unquantized, as transformers keeps it. A sampled plan trains every layer at some time
and cannot keep them quantized: refused.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from planner.errors import PlannerError
from planner.levers.base import ExportItems, Flag, Lever, register_lever

NF4_BLOCK = 64  # weights per absmax (BitsAndBytesConfig's default bnb_4bit_blocksize)
Quantize = Literal["nf4", "nf4-dq", "int8"]


def _bnb():
    try:
        import bitsandbytes
    except ImportError:
        raise PlannerError("--quantize runs bitsandbytes, which must be installed (pip install bitsandbytes), "
                           "but it is not") from None
    return bitsandbytes


def _quantized(module: nn.Module, kind: str, compute_dtype: torch.dtype) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    bnb = _bnb()
    weight = module.weight.data
    if isinstance(module, Conv1D):  # transformers transposes gpt2's Conv1D weights into a Linear's layout
        weight = weight.t()
    out_features, in_features = weight.shape
    bias = module.bias is not None
    if kind == "int8":
        new = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias, has_fp16_weights=False, threshold=6.0)
        new.weight = bnb.nn.Int8Params(weight.contiguous(), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(in_features, out_features, bias=bias, compute_dtype=compute_dtype, quant_type="nf4",
                                compress_statistics=kind == "nf4-dq")
        new.weight = bnb.nn.Params4bit(weight.contiguous(), requires_grad=False, quant_type="nf4",
                                       compress_statistics=kind == "nf4-dq", blocksize=NF4_BLOCK)
    if bias:
        new.bias = nn.Parameter(module.bias.data, requires_grad=False)
    return new.to(weight.device)  # bitsandbytes quantizes when the weight moves to its device


def quantize_layers(model: nn.Module, layers, kind: str, compute_dtype: torch.dtype) -> None:
    """Replace the linear modules of ``layers`` (decoder-layer modules) with bitsandbytes' quantized ones."""
    from transformers.pytorch_utils import Conv1D

    for layer in layers:
        for name, module in list(layer.named_modules()):
            if isinstance(module, (nn.Linear, Conv1D)) and "lora_" not in name:
                parent_name, _, leaf = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                setattr(parent, leaf, _quantized(module, kind, compute_dtype))


def kbit_casts(model: nn.Module) -> None:
    """peft ``prepare_model_for_kbit_training``'s casts: float16/bfloat16 parameters that are not 4-bit go to float32."""
    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ != "Params4bit":
            p.data = p.data.to(torch.float32)


def quant_state_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors bitsandbytes keeps beside quantized weights (absmax, nested state, row scales): they
    live as long as the model but are neither parameters nor buffers."""
    out = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        qs = getattr(w, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, qs.code]
            if getattr(qs, "nested", False):
                out += [qs.state2.absmax, qs.state2.code, qs.offset]
        scb = getattr(w, "SCB", None)
        if scb is not None:
            out.append(scb)
    return [t for t in out if isinstance(t, torch.Tensor)]


@register_lever
class Quantize4bit(Lever):
    name = "quantize"
    order = 20
    fields = {"quantize": (Quantize | None, Field(None, description="store frozen linear weights with bitsandbytes: "
                                                                   "nf4, nf4-dq (double quantization) or int8"))}
    flag = Flag("--quantize", "quantize", "store frozen decoder-layer linear weights as bitsandbytes does "
                "(nf4, nf4-dq, int8); LoRA (QLoRA) or a static layer set", metavar="{nf4,nf4-dq,int8}")
    searchable = True

    def active(self, cfg) -> bool:
        return cfg.quantize is not None

    def problems(self, cfg) -> list[str]:
        if cfg.quantize is None:
            return []
        if cfg.active_layers is not None:
            return [f"`quantize` stores frozen layers quantized, and a sampled plan trains every layer at some time, "
                    f"but got quantize={cfg.quantize!r} with active_layers={cfg.active_layers}"]
        if cfg.layers == "all" and not cfg.lora_rank:
            return [f"`quantize` needs frozen linear weights (LoRA, or a static layer set), but got quantize={cfg.quantize!r} "
                    "with every layer trained in full"]
        if cfg.amp != "none":
            return [f"`quantize` computes in the model's dtype (bnb_4bit_compute_dtype), but got amp={cfg.amp!r}"]
        return []

    def label(self, cfg):
        return {"nf4": "NF4", "nf4-dq": "NF4 + double quant", "int8": "int8"}.get(cfg.quantize)

    def prepare(self, model, cfg, layers):
        from planner.spec.arch import find_decoder_layers

        _, decoder = find_decoder_layers(model)
        frozen = range(len(decoder)) if cfg.lora_rank else [i for i in range(len(decoder)) if i not in layers]
        quantize_layers(model, [decoder[i] for i in frozen], cfg.quantize, getattr(torch, cfg.dtype))
        kbit_casts(model)
        return model

    def export(self, target, cfg):
        if cfg.quantize is None:
            return ExportItems()
        bits = 8 if cfg.quantize == "int8" else 4
        if target == "hf":
            return ExportItems({"quantization_config": {f"load_in_{bits}bit": True, **(
                {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": cfg.quantize == "nf4-dq",
                 "bnb_4bit_compute_dtype": cfg.dtype} if bits == 4 else {})}})
        if target == "axolotl":
            return ExportItems({f"load_in_{bits}bit": True, **({"adapter": "qlora"} if bits == 4 and cfg.lora_rank else {})},
                               lost=[] if cfg.quantize != "nf4" else
                               ["axolotl's 4-bit loading always double-quantizes (bnb_4bit_use_double_quant: True)"])
        if target == "llamafactory":
            return ExportItems({"quantization_bit": bits, "quantization_method": "bnb",
                                **({"double_quantization": cfg.quantize == "nf4-dq"} if bits == 4 else {})})
        if target == "swift":
            return ExportItems({"quant_method": "bnb", "quant_bits": bits,
                                **({"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": cfg.quantize == "nf4-dq"}
                                   if bits == 4 else {})})
        if target == "planner":
            return ExportItems()
        return ExportItems(lost=[f"quantized frozen weights ({cfg.quantize}): {target} loads them in {cfg.dtype}"])
