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
frozen decoder layers (all of them under LoRA, whose base weights are frozen everywhere, whatever a
sampler draws); the head stays unquantized, as transformers keeps it. A sampled plan without LoRA
trains every layer at some time and cannot keep them quantized: refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from planner.bnb import load_bitsandbytes
from planner.levers.base import ExportItems, Flag, Lever, is_fake, register_lever

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

NF4_BLOCK = 64  # weights per absmax (BitsAndBytesConfig's default bnb_4bit_blocksize)
Quantize = Literal["nf4", "nf4-dq", "int8"]


def _bnb():
    return load_bitsandbytes("--quantize")


# torch, transformers and bitsandbytes are imported where a model is changed: the config imports every lever
def _quantized(module: "nn.Linear | Conv1D", kind: str, compute_dtype: "torch.dtype") -> "nn.Module":
    # torch, transformers: deferred, the config (and so 'planner --help') imports every lever
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    bnb = _bnb()
    weight = module.weight.data
    if isinstance(module, Conv1D):  # transformers transposes gpt2's Conv1D weights into a Linear's layout
        weight = weight.t()
    out_features, in_features = weight.shape
    bias = module.bias is not None
    if is_fake(weight):
        return _fake_quantized(bnb, weight, module.bias, kind, compute_dtype)
    if kind == "int8":
        new = bnb.nn.Linear8bitLt(in_features, out_features, bias=bias, has_fp16_weights=False, threshold=6.0)
        new.weight = bnb.nn.Int8Params(weight.contiguous(), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(
            in_features,
            out_features,
            bias=bias,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            compress_statistics=kind == "nf4-dq",
        )
        new.weight = bnb.nn.Params4bit(
            weight.contiguous(),
            requires_grad=False,
            quant_type="nf4",
            compress_statistics=kind == "nf4-dq",
            blocksize=NF4_BLOCK,
        )
    if bias:
        new.bias = nn.Parameter(module.bias.data, requires_grad=False)
    return new.to(weight.device)  # bitsandbytes quantizes when the weight moves to its device


NESTED_BLOCK = 256  # double quantization: absmax quantized to uint8 in blocks of 256 (bitsandbytes quantize_4bit)
DYNAMIC_MAP = 256  # entries of the dynamic map the nested absmax are coded with (float32)
NF4_CODES = 16  # entries of the NF4 code book (float32)


def _fake_quantized(bnb, weight, bias, kind: str, compute_dtype):
    """Under FakeTensorMode (full-width traces of large models) bitsandbytes cannot wrap a fake tensor in its
    parameter classes: the same module is built on the meta device and given fake tensors of the sizes its
    quantization stores (the layout of ``quantize_4bit`` / ``int8_vectorwise_quant``), so its forward and
    backward run bitsandbytes' own code on them."""
    # torch, bitsandbytes: deferred, the config (and so 'planner --help') imports every lever
    import torch
    from bitsandbytes.functional import QuantState
    from torch import nn
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    out_features, in_features = weight.shape
    with unset_fake_temporarily():
        if kind == "int8":
            new = bnb.nn.Linear8bitLt(
                in_features, out_features, bias=bias is not None, has_fp16_weights=False, threshold=6.0, device="meta"
            )
        else:
            new = bnb.nn.Linear4bit(
                in_features,
                out_features,
                bias=bias is not None,
                compute_dtype=compute_dtype,
                quant_type="nf4",
                compress_statistics=kind == "nf4-dq",
                device="meta",
            )
    n = weight.numel()
    if kind == "int8":
        w = nn.Parameter(torch.empty((out_features, in_features), dtype=torch.int8), requires_grad=False)
        # what bitsandbytes' Int8Params carries, set on a plain Parameter (its class cannot hold a fake tensor)
        scb = torch.empty(out_features, dtype=torch.float32)
        w.CB, w.SCB, w.has_fp16_weights = w.data, scb, False  # type: ignore[attr-defined]
        new.state.CB, new.state.SCB = w.CB, w.SCB  # type: ignore[attr-defined]
    else:
        blocks = -(-n // NF4_BLOCK)
        common = dict(
            shape=weight.shape, code=torch.empty(NF4_CODES), blocksize=NF4_BLOCK, quant_type="nf4", dtype=weight.dtype
        )
        if kind == "nf4-dq":
            # the nested absmax are coded with bitsandbytes' cached dynamic map, which each weight's state
            # keeps a copy of (quantize_blockwise: ``code.to(A.device, copy=True)``)
            state2 = QuantState(
                absmax=torch.empty(-(-blocks // NESTED_BLOCK)),
                code=torch.empty(DYNAMIC_MAP),
                blocksize=NESTED_BLOCK,
                dtype=torch.float32,
            )
            qs = QuantState(
                absmax=torch.empty(blocks, dtype=torch.uint8), offset=torch.empty(()), state2=state2, **common
            )
        else:
            qs = QuantState(absmax=torch.empty(blocks), **common)
        w = nn.Parameter(torch.empty(((n + 1) // 2, 1), dtype=torch.uint8), requires_grad=False)
        w.quant_state, w.bnb_quantized = qs, True  # type: ignore[attr-defined]  # Params4bit's, as for int8 above
    new.weight = w
    if bias is not None:
        new.bias = nn.Parameter(bias.data, requires_grad=False)
    return new


def quantize_layers(model: "nn.Module", layers, kind: str, compute_dtype: "torch.dtype") -> None:
    """Replace the linear modules of ``layers`` (decoder-layer modules) with bitsandbytes' quantized ones."""
    # torch, transformers: deferred, the config (and so 'planner --help') imports every lever
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    for layer in layers:
        for name, module in list(layer.named_modules()):
            if isinstance(module, (nn.Linear, Conv1D)) and "lora_" not in name:
                parent_name, _, leaf = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                setattr(parent, leaf, _quantized(module, kind, compute_dtype))


def round_trip(weight: "torch.Tensor", kind: str) -> "torch.Tensor":
    """``weight`` after storage and dequantization as bitsandbytes does it: NF4 in blocks of 64 (absmax double-
    quantized for ``nf4-dq``) with ``bitsandbytes.functional``; int8 per output row, LLM.int8's vector-wise rule
    ``round(127 · w / max|w_row|)`` (``int8_vectorwise_quant``, the weights carry no outliers here)."""
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch

    if kind == "int8":
        scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
        return (torch.round(weight * 127 / scale) * scale / 127).to(weight.dtype)
    F = _bnb().functional
    packed, state = F.quantize_4bit(
        weight.contiguous(), blocksize=NF4_BLOCK, quant_type="nf4", compress_statistics=kind == "nf4-dq"
    )
    return F.dequantize_4bit(packed, state).to(weight.dtype).reshape(weight.shape)


def kbit_casts(model: "nn.Module") -> None:
    """peft ``prepare_model_for_kbit_training``'s casts: float16/bfloat16 parameters that are not 4-bit go to float32."""
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch

    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ != "Params4bit":
            p.data = p.data.to(torch.float32)


def quant_state_tensors(model: "nn.Module") -> list["torch.Tensor"]:
    """Tensors bitsandbytes keeps beside quantized weights (absmax, nested state, row scales): they
    live as long as the model but are neither parameters nor buffers. An int8 weight's row scales move
    from the weight (``weight.SCB``) to its module's ``state.SCB`` in the first forward
    (``Linear8bitLt.init_8bit_state``): both places are read."""
    out = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        qs = getattr(w, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, qs.code]
            if getattr(qs, "nested", False):
                out += [qs.state2.absmax, qs.state2.code, qs.offset]
        out += [getattr(w, "SCB", None), getattr(getattr(m, "state", None), "SCB", None)]
    return [t for t in out if hasattr(t, "untyped_storage")]


def settle(forward) -> None:
    """Bring bitsandbytes' quantized linears to the state every step after the first finds them, by one
    forward (``forward()``) without gradients: the first forward casts a bias in place to the dtype
    it computes in (``Linear4bit.forward``: ``bias.data = bias.data.to(x.dtype)``, so a bias peft made
    float32 goes back to the compute dtype; ``Linear8bitLt`` to the input's dtype) and moves the int8
    row scales into the module's state."""
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch

    with torch.no_grad():
        forward()


@register_lever
class Quantize4bit(Lever):
    name = "quantize"
    order = 20
    changes_result = True
    fields = {
        "quantize": (
            Quantize | None,
            Field(
                None,
                description="store frozen linear weights with bitsandbytes: nf4, nf4-dq (double quantization) or int8",
            ),
        )
    }
    flag = Flag(
        "--quantize",
        "quantize",
        "store frozen decoder-layer linear weights as bitsandbytes does "
        "(nf4, nf4-dq, int8); LoRA (QLoRA) or a static layer set",
        metavar="{nf4,nf4-dq,int8}",
    )
    searchable = True

    def active(self, cfg) -> bool:
        return cfg.quantize is not None

    def problems(self, cfg) -> list[str]:
        if cfg.quantize is None:
            return []
        if cfg.active_layers is not None and not cfg.lora_rank:
            return [
                f"`quantize` stores frozen layers quantized, and a sampled plan trains every layer at some time "
                f"(LoRA's base weights excepted), but got quantize={cfg.quantize!r} with active_layers={cfg.active_layers}"
            ]
        if cfg.layers == "all" and not cfg.lora_rank:
            return [
                f"`quantize` needs frozen linear weights (LoRA, or a static layer set), but got quantize={cfg.quantize!r} "
                "with every layer trained in full"
            ]
        if cfg.amp != "none":
            return [f"`quantize` computes in the model's dtype (bnb_4bit_compute_dtype), but got amp={cfg.amp!r}"]
        return []

    def label(self, cfg):
        return {"nf4": "NF4", "nf4-dq": "NF4 + double quant", "int8": "int8"}.get(cfg.quantize)

    def prepare(self, model, cfg, layers):
        # torch, planner.spec (torch): deferred, the config (and so 'planner --help') imports every lever
        import torch

        from planner.spec.arch import find_decoder_layers

        _, decoder = find_decoder_layers(model)
        frozen = range(len(decoder)) if cfg.lora_rank else [i for i in range(len(decoder)) if i not in layers]
        quantize_layers(model, [decoder[i] for i in frozen], cfg.quantize, getattr(torch, cfg.dtype))
        kbit_casts(model)
        return model

    def proxy_model(self, model, fields, frozen_below=None):
        """The frozen weights carry the quantization error: each frozen linear weight goes through the round trip
        (the proxy trains in float; what a 4-bit run loses is in its weights): every layer's under LoRA, the
        layers below ``frozen_below`` of a static set."""
        # torch, transformers, planner.spec (torch): deferred, the config (and so 'planner --help') imports every lever
        import torch
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        from planner.spec.arch import find_decoder_layers

        kind = fields.get("quantize")
        if kind is None:
            return model
        _, decoder = find_decoder_layers(model)
        with torch.no_grad():
            for layer in decoder[:frozen_below]:  # LoRA's base weights: every layer
                for name, module in layer.named_modules():
                    if isinstance(module, (nn.Linear, Conv1D)) and "lora_" not in name:
                        module.weight.copy_(round_trip(module.weight.data, kind))
        return model

    def export(self, target, cfg, layers_attribute="model.layers"):
        if cfg.quantize is None:
            return ExportItems()
        bits = 8 if cfg.quantize == "int8" else 4
        # transformers keeps these in float: the head, and the decoder layers a static set trains in full
        trained = [] if cfg.lora_rank or not isinstance(cfg.layers, list) else cfg.layers
        skip = ["lm_head"] + [f"{layers_attribute}.{i}" for i in trained]
        if target == "hf":
            return ExportItems(
                {
                    "quantization_config": {
                        f"load_in_{bits}bit": True,
                        "llm_int8_skip_modules": skip,
                        **(
                            {
                                "bnb_4bit_quant_type": "nf4",
                                "bnb_4bit_use_double_quant": cfg.quantize == "nf4-dq",
                                "bnb_4bit_compute_dtype": cfg.dtype,
                            }
                            if bits == 4
                            else {}
                        ),
                    }
                }
            )
        if trained and target != "planner":
            return ExportItems(
                lost=[
                    f"quantized frozen layers of a static set ({cfg.quantize}): {target} quantizes every "
                    f"layer or none, and layers {trained} train in full: exported unquantized"
                ]
            )
        if target == "axolotl":
            # axolotl quantizes under its own adapters only (loaders/model.py): 4 bits with adapter: qlora and
            # load_in_4bit (nf4, double quantization unless bnb_config_kwargs says otherwise), 8 bits with adapter: lora
            # and load_in_8bit; the export writes adapter: lora (a sampled plan's whole-layer export drops these keys)
            if bits == 8:
                return ExportItems({"load_in_8bit": True})
            keys = {"adapter": "qlora", "load_in_4bit": True}
            if cfg.quantize == "nf4":
                keys["bnb_config_kwargs"] = {"bnb_4bit_use_double_quant": False}
            return ExportItems(keys)
        if target == "llamafactory":
            # model/model_utils/quantization.py: BitsAndBytesConfig(load_in_8bit=True), or load_in_4bit with
            # quantization_type and double_quantization (default true), computing in the model's dtype
            keys = {"quantization_bit": bits, "quantization_method": "bnb"}
            if bits == 4:
                keys.update(quantization_type="nf4", double_quantization=cfg.quantize == "nf4-dq")
            return ExportItems(keys)
        if target == "swift":
            return ExportItems(
                {
                    "quant_method": "bnb",
                    "quant_bits": bits,
                    **(
                        {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": cfg.quantize == "nf4-dq"}
                        if bits == 4
                        else {}
                    ),
                }
            )
        if target == "planner":
            return ExportItems()
        return ExportItems(lost=[f"quantized frozen weights ({cfg.quantize}): {target} loads them in {cfg.dtype}"])
