"""Liger's fused linear cross-entropy (``LigerFusedLinearCrossEntropyFunction``), the loss Liger-Kernel patches
into a causal LM's forward (``lce_forward``) when ``fused_linear_cross_entropy`` is on.

Read from linkedin/Liger-Kernel v0.8.2 (commit 000be60; the files are unchanged at ead96b6):
``src/liger_kernel/ops/fused_linear_cross_entropy.py`` (the chunk loop and the autograd function),
``src/liger_kernel/ops/cross_entropy.py`` (``liger_cross_entropy_kernel``), ``transformers/model/loss_utils.py``
(``LigerForCausalLMLoss``: labels shifted by one, ignore_index -100, mean over the tokens that count),
``transformers/model/llama.py`` (``lce_forward``: in training the head's logits are never made) and
``transformers/monkey_patch.py`` (``MODEL_TYPE_TO_APPLY_LIGER_FN``: the architectures it patches).

The full logits never exist. Forward splits the B*T rows of the final hidden states into chunks of
``next_power_of_2(ceil(BT / ceil(V / H)))`` rows; it first allocates ``grad_input`` (BT x H, the hidden states'
dtype), ``grad_weight`` (V x H in the head weight's dtype, only when the head trains and its input needs a
gradient: ``accum_dtype`` is None in ``lce_forward``), the float32 per-row losses and the label mask. Per chunk:
``logits = x_c @ W.T`` (the chunk in the matmul's dtype: no float32 copy), the Triton kernel writes the loss of
each row and overwrites the logits with d loss / d logits in place (computing in float32 in registers), then
``grad_input[c] = grad_logits @ W`` and ``grad_weight += (grad_logits.T @ x_c).float()`` (a V x H product in the
logits' dtype and its float32 copy, for an instant). The previous chunk's logits are still referenced while the
next chunk's are made. Forward saves only ``grad_input`` and ``grad_weight``; backward scales them by the
incoming gradient in place (nothing when it is 1) and hands them to autograd.

:class:`FusedLinearCrossEntropy` is that function in pure torch, op for op, with the same chunk size, the same
tensors kept and the same dtypes, so the cost model's CPU trace counts what Liger allocates. The kernel itself is
one opaque op here (``planner::liger_ce_rows``, a torch custom op): whatever it uses inside is invisible to the
trace, as the Triton kernel's registers and shared memory are to the CUDA allocator (on CPU it works through
rows a block at a time, at most :data:`SCRATCH_ELEMENTS` float32 values per temporary). The loss equals the
model's own mean next-token cross-entropy. Liger runs on GPUs only (Triton); where ``planner tune`` trains the
target as its own proxy (on the CPU or a GPU), it trains with this equivalent (the same math), not Liger's kernel.

Not modelled: the other Liger kernels (RoPE, RMSNorm/LayerNorm, SwiGLU/GeGLU) that most trainers switch on with
the same key, and on CPU the float32 temporaries TensorIterator makes for ``grad_weight += (...).float()`` with a
16-bit head (CUDA casts in the kernel).
"""

from __future__ import annotations

from pydantic import Field

from planner.errors import PlannerError
from planner.levers.base import ExportItems, Flag, Lever, causal_lm, is_fake, register_lever
from planner.levers.loss_chunks import IGNORE_INDEX

# Liger-Kernel v0.8.2 monkey_patch.py MODEL_TYPE_TO_APPLY_LIGER_FN: the architectures whose forward Liger replaces
LIGER_MODEL_TYPES = frozenset(
    {
        "deepseek_v4",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
        "gemma4_text",
        "gemma4",
        "glm4",
        "glm4v",
        "glm4v_moe",
        "gpt_oss",
        "internvl",
        "llama",
        "llama4_text",
        "llama4",
        "llava",
        "granite",
        "mllama",
        "mllama_text_model",
        "ministral",
        "mistral",
        "mixtral",
        "nemotron",
        "olmo2",
        "pixtral",
        "olmo3",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "qwen2_vl",
        "qwen2_vl_text",
        "qwen2_5_vl",
        "qwen2_5_vl_text",
        "qwen3_next",
        "qwen3_5",
        "qwen3_5_text",
        "qwen3_5_moe",
        "qwen3_5_moe_text",
        "qwen3_vl",
        "qwen3_vl_text",
        "qwen3_vl_moe",
        "qwen3_vl_moe_text",
        "smollm3",
        "phi3",
        "paligemma",
        "falcon_h1",
        "smolvlm",
        "hunyuan_v1_dense",
        "hunyuan_v1_moe",
        "exaone4",
    }
)
SCRATCH_ELEMENTS = 1 << 16  # float32 values per temporary of the CPU stand-in for the kernel (invisible to the trace)
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
OTHER_KERNELS = "RoPE, RMSNorm/LayerNorm and SwiGLU/GeGLU"
# transformers' TrainingArguments.liger_kernel_config for the fused loss alone: every other kernel switch of Liger's
# apply_liger_kernel_to_* functions off (_apply_liger_kernel_to_instance drops those a model's function lacks)
HF_FLCE_ONLY = {
    "fused_linear_cross_entropy": True,
    "cross_entropy": False,
    "rope": False,
    "rms_norm": False,
    "layer_norm": False,
    "swiglu": False,
    "geglu": False,
    "relu_squared": False,
}


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2``: the smallest power of 2 >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def chunking(rows: int, hidden: int, vocab: int) -> tuple[int, int]:
    """(chunk_size, num_chunks) of ``fused_linear_cross_entropy_forward`` for BT=``rows``, H=``hidden``, V=``vocab``."""
    inc_factor = -(-vocab // hidden)  # triton.cdiv(V, H)
    chunk_size = next_power_of_2(-(-rows // inc_factor))
    return chunk_size, -(-rows // chunk_size)


_OP = None


def _ce_rows_op():
    """The custom op that stands for ``liger_cross_entropy_kernel`` (mean reduction, hard labels, optional softcap),
    registered on first use (torch is imported late: the config imports every lever)."""
    global _OP
    if _OP is not None:
        return _OP
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch

    @torch.library.custom_op(
        "planner::liger_ce_rows",
        mutates_args=("logits", "loss"),
        schema=(
            "(Tensor(a!) logits, Tensor target, Tensor(b!) loss, float n_non_ignore, int ignore_index, float? softcap, "
            "bool gradients) -> ()"
        ),
    )
    def liger_ce_rows(logits, target, loss, n_non_ignore, ignore_index, softcap, gradients):
        """Per row of ``logits`` (n x V): the loss into ``loss`` and, where ``gradients``, d loss / d logits over the
        logits in place (float32 inside, stored in the logits' dtype); an ignored row's logits become 0, its loss 0."""
        n, vocab = logits.shape
        step = max(1, SCRATCH_ELEMENTS // vocab)
        for start in range(0, n, step):
            stop = min(n, start + step)
            x = logits[start:stop].float()
            y = target[start:stop]
            keep = y != ignore_index
            if softcap is not None:
                t = torch.tanh(x / softcap)
                x = softcap * t
            m = x.amax(dim=-1, keepdim=True)
            e = torch.exp(x - m)
            d = e.sum(dim=-1, keepdim=True)
            lse = m + torch.log(d)
            x_y = x.gather(-1, y.clamp(min=0).unsqueeze(-1))
            loss[start:stop] = torch.where(keep, (lse - x_y).squeeze(-1) / n_non_ignore, 0.0)
            if gradients:
                g = e.div_(d)  # softmax; the label's entry is (softmax - 1), in float32 before rounding
                g.scatter_add_(-1, y.clamp(min=0).unsqueeze(-1), torch.full_like(x_y, -1.0))
                g.div_(n_non_ignore)
                if softcap is not None:
                    g.mul_(1 - t * t)
                g.mul_(keep.unsqueeze(-1))
                logits[start:stop] = g
            else:
                logits[start:stop].masked_fill_(~keep.unsqueeze(-1), 0)

    @liger_ce_rows.register_fake
    def _(logits, target, loss, n_non_ignore, ignore_index, softcap, gradients) -> None:
        return None

    _OP = liger_ce_rows
    return _OP


def _count(mask) -> float:
    """``target_mask.sum().item()``; under FakeTensorMode (no values) any positive count does (memory is the same)."""
    total = mask.sum()
    return 1.0 if is_fake(total) else float(total.item())


def fused_linear_cross_entropy_forward(
    _input, weight, target, ignore_index: int = IGNORE_INDEX, softcap: float | None = None
):
    """Liger's ``fused_linear_cross_entropy_forward`` (reduction mean, no bias, class weights, label smoothing,
    z-loss or token scaling; ``accum_dtype`` None), statement for statement: returns (loss, grad_input, grad_weight)."""
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch

    kernel = _ce_rows_op()
    input_requires_grad = _input.requires_grad
    weight_needs_grad = weight.requires_grad
    BT, H = _input.shape
    V = weight.shape[0]
    chunk_size, num_chunks = chunking(BT, H, V)

    grad_input = torch.zeros_like(_input, device=_input.device)
    if input_requires_grad:
        grad_weight = torch.zeros_like(weight, device=_input.device) if weight_needs_grad else None
    else:
        grad_weight = None
    loss_1d = torch.zeros(BT, dtype=torch.float32, device=_input.device)

    target_mask = target != ignore_index
    total_n_non_ignore = _count(target_mask)

    for chunk_id in range(num_chunks):
        start_idx = chunk_id * chunk_size
        end_idx = min((chunk_id + 1) * chunk_size, BT)
        _input_chunk = _input[start_idx:end_idx]
        logits_chunk = _input_chunk @ weight.t()  # the matmul's dtype (the autocast dtype under amp)
        target_chunk = target[start_idx:end_idx]
        loss_1d_slice = loss_1d[start_idx:end_idx]
        logits_chunk = logits_chunk.contiguous()
        target_chunk = target_chunk.contiguous()
        kernel(
            logits_chunk, target_chunk, loss_1d_slice, total_n_non_ignore, ignore_index, softcap, input_requires_grad
        )
        loss_1d[start_idx:end_idx] = loss_1d_slice
        grad_logits_chunk = logits_chunk
        if input_requires_grad:
            grad_input[start_idx:end_idx] = grad_logits_chunk @ weight
        if grad_weight is not None and input_requires_grad:
            grad_logits_t = grad_logits_chunk.t()  # noqa: F841 (Liger keeps this view alive until the next chunk)
            # the addmm fast path needs a float32 grad_weight (accum_dtype); lce_forward leaves it None
            grad_weight += torch.mm(grad_logits_chunk.t(), _input_chunk).float()

    loss = torch.sum(loss_1d)
    grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
    return loss, grad_input, grad_weight


class _Function:
    """Holder for the autograd function, built on first use (torch is imported late)."""

    cls: type | None = None


def _function():
    if _Function.cls is not None:
        return _Function.cls
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch

    class FusedLinearCrossEntropy(torch.autograd.Function):
        """``LigerFusedLinearCrossEntropyFunction`` (mean reduction): gradients computed in forward, saved, and only
        scaled by ``grad_output`` in backward. Its forward takes the ambient autocast state, as Liger's
        ``amp_custom_fwd`` (no input casts) does."""

        @staticmethod
        def forward(ctx, _input, weight, target, ignore_index=IGNORE_INDEX, softcap=None):
            loss, grad_input, grad_weight = fused_linear_cross_entropy_forward(
                _input, weight, target, ignore_index, softcap
            )
            ctx.save_for_backward(grad_input.detach(), grad_weight.detach() if grad_weight is not None else None)
            return loss

        @staticmethod
        def backward(ctx, grad_output):
            grad_input, grad_weight = ctx.saved_tensors
            # fused_linear_cross_entropy_backward: skipped when the loss is the last layer (grad_output == 1)
            one = torch.tensor(1.0, device=grad_output.device)
            if not (is_fake(grad_output) or torch.equal(grad_output, one)):
                grad_input.mul_(grad_output)  # element_mul_kernel: in place
                if grad_weight is not None:
                    grad_weight.mul_(grad_output)
            return grad_input, grad_weight, None, None, None

    _Function.cls = FusedLinearCrossEntropy
    return FusedLinearCrossEntropy


def liger_loss(model, batch: dict):
    """The training loss as Liger's ``lce_forward`` computes it: the base model's final hidden states, then
    ``LigerForCausalLMLoss`` (labels shifted by one with -100 padding, flattened, mean over the counted tokens)."""
    # torch: deferred, the config (and so 'planner --help') imports every lever
    import torch.nn.functional as F

    lm = causal_lm(model)
    hidden = lm.base_model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state
    head = lm.get_output_embeddings()
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)
    shift_labels = labels[..., 1:].contiguous()
    hidden_size = hidden.shape[-1]
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return _function().apply(hidden.view(-1, hidden_size), head.weight, shift_labels.view(-1), IGNORE_INDEX, softcap)


@register_lever
class LigerFusedCE(Lever):
    name = "liger_fused_ce"
    order = 91
    in_shape = True
    # fit_value stays None: the search never pulls it. Liger is a GPU-only Triton kernel the user must install, and
    # the command-line switches of LLaMA-Factory, LMFlow and ms-swift bring Liger's other kernels with it, so a plan
    # must not come to depend on it unless the user asked for it.
    fields = {
        "liger_fused_ce": (
            bool,
            Field(
                False,
                description="Liger-Kernel's fused linear cross-entropy: the head's "
                "logits are made and differentiated a chunk of tokens "
                "at a time in forward, never all at once (GPU only)",
            ),
        )
    }
    flag = Flag(
        "--liger-fused-ce",
        "liger_fused_ce",
        "compute the loss with Liger-Kernel's fused linear "
        "cross-entropy (LigerFusedLinearCrossEntropyFunction: logits and their gradient a chunk of tokens at "
        "a time, in forward; GPU only)",
        kind="bool",
    )

    def active(self, cfg) -> bool:
        return bool(getattr(cfg, "liger_fused_ce", False))

    def problems(self, cfg) -> list[str]:
        if cfg.liger_fused_ce and cfg.loss_chunks > 1:
            return [
                f"`liger_fused_ce` computes the whole loss itself, so `loss_chunks == 1` must hold with it, but got "
                f"liger_fused_ce=True with loss_chunks={cfg.loss_chunks}"
            ]
        return []

    def label(self, cfg):
        return "Liger fused linear CE" if self.active(cfg) else None

    def prepare(self, model, cfg, layers):
        model_type = getattr(model.config, "model_type", None)
        if model_type not in LIGER_MODEL_TYPES:
            raise PlannerError(
                f"`liger_fused_ce` needs an architecture Liger-Kernel patches (llama, mistral, qwen2, "
                f"gemma, phi3, ...), but got model_type {model_type!r}"
            )
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise PlannerError(
                "`liger_fused_ce` needs an output head without bias (Liger passes only its weight), "
                f"but model_type {model_type!r} has one"
            )
        return model

    def compute_loss(self, model, batch, cfg):
        return liger_loss(model, batch)

    def export(self, target, cfg, layers_attribute="model.layers"):
        if not self.active(cfg) or target == "planner":
            return ExportItems()
        if target == "axolotl":
            # integrations/liger/plugin.py: each liger_* flag left unset passes None (off) to apply_liger_kernel_to_*
            return ExportItems({"plugins": [LIGER_PLUGIN], "liger_fused_linear_cross_entropy": True})
        if target == "llamafactory":
            # model/model_utils/liger_kernel.py: apply_liger_kernel_to_<model>() with its defaults for stage sft
            return ExportItems({"enable_liger_kernel": True}, [_others("LLaMA-Factory's enable_liger_kernel")])
        if target in ("lmflow", "swift"):
            # transformers' Trainer applies Liger when use_liger_kernel is set; liger_kernel_config (a dict) cannot
            # be given on the command line, so every default kernel of the model is applied
            name = "LMFlow's --use_liger_kernel" if target == "lmflow" else "ms-swift's --use_liger_kernel"
            return ExportItems({"use_liger_kernel": True}, [_others(name)])
        if target == "hf":
            # the exporter writes lever keys into the script's plan, not into training_args.json, where transformers'
            # use_liger_kernel and liger_kernel_config belong
            return ExportItems(
                lost=[
                    "memory: Liger's fused linear cross-entropy: the exported script does not apply it, so the "
                    "Trainer makes the whole logits; with liger-kernel installed, TrainingArguments("
                    f"use_liger_kernel=True, liger_kernel_config={HF_FLCE_ONLY}) applies it alone"
                ]
            )
        return ExportItems(
            lost=[
                f"memory: Liger's fused linear cross-entropy: {target} does not choose the loss; the trainer "
                "that loads this export makes the whole logits unless it applies Liger"
            ]
        )


def _others(switch: str) -> str:
    return (
        f"memory: Liger's other kernels: {switch} also swaps in Liger's {OTHER_KERNELS} kernels, which change activation "
        "memory in a way the plan's estimate does not include (it counts the fused linear cross-entropy only)"
    )
