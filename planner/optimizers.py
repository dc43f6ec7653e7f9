"""Optimizers, one strategy each, registered by name: the torch class that runs, its name in the
Hugging Face Trainer (``optim``), and the memory it keeps.

Each strategy answers, for the trainable tensors ``(numel, bytes_per_element)`` in parameter order:
``state_bytes`` (alive during the whole step) and ``step_peak`` (temporaries on top of
weights + grads + state while ``optimizer.step()`` runs). ``block`` is how a device counts one
tensor's bytes (identity on CPU, 512-byte rounding on CUDA). ``paged``: the state lives in CUDA
unified memory outside PyTorch's caching allocator (bitsandbytes' paged optimizers), so
``torch.cuda.max_memory_allocated``/``reserved`` do not count it (on the CPU it is ordinary memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from planner.bnb import load_bitsandbytes
from planner.errors import PlannerError
from planner.registry import registrar

if TYPE_CHECKING:
    import torch

Tensors = Sequence[tuple[int, int]]  # (numel, bytes per element)
STEP_TENSOR_BYTES = 4  # torch keeps AdamW's `step` as a float32 scalar tensor on the CPU (not capturable)
ADAM_MOMENTS = 2  # m and v (Kingma & Ba 2015), in the parameter's dtype in torch
BNB_BLOCK = 256  # bitsandbytes blockwise 8-bit optimizer block (2048 in releases before 0.44)
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors smaller than this
BNB_ABSMAX_BYTES = 4  # one float32 absmax per block per moment
BNB_QMAP_BYTES = 2 * 256 * 4  # the two dynamic quantization maps, shared by all tensors


def _identity(n: int) -> int:
    return n


OPTIMIZERS: dict[str, type] = {}
register_optimizer = registrar(OPTIMIZERS, "optimizer")


class Optimizer:
    """Base strategy."""

    name: ClassVar[str] = ""
    hf_name: ClassVar[str] = ""  # transformers.TrainingArguments(optim=...), axolotl `optimizer`, LLaMA-Factory `optim`
    paged: ClassVar[bool] = False

    def build(self, params, lr: float, *, foreach: bool | None = None) -> "torch.optim.Optimizer":
        """The optimizer that runs (``foreach`` where the class has it)."""
        raise NotImplementedError

    def shadow(self, params, *, foreach: bool | None = None) -> "ShadowStep":
        """A stand-in with the step's allocations and no arithmetic, for traces under ``FakeTensorMode``
        (where the real step reads its step count with ``.item()``, which fake tensors cannot answer)."""
        return ShadowStep(self, list(params), "cuda" if foreach else "cpu")

    def state_bytes(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        """Bytes of the state, alive during the whole step."""
        raise NotImplementedError

    def step_peak(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        """Bytes of the step's temporaries at their peak, on top of weights, gradients and state."""
        raise NotImplementedError

    def state_blocks(self, tensors: Tensors) -> list[int]:
        """Bytes of each state tensor, in the order the first step creates them."""
        raise NotImplementedError

    def step_blocks(self, tensors: Tensors) -> list[int]:
        """Bytes of each temporary of one step."""
        raise NotImplementedError


class ShadowStep:
    """Allocates and frees one step's temporaries as the strategy counts them (``step_peak`` of its tensors)."""

    def __init__(self, strategy: Optimizer, params, device: str):
        self.strategy, self.params, self.device = strategy, params, device
        self.state: dict = {}

    def step(self):
        import torch  # deferred: configs and plans name optimizers without loading torch

        sizes = [(p.numel(), p.element_size()) for p in self.params]
        peak = self.strategy.step_peak(sizes, self.device)
        if peak and self.params:
            temps = [torch.empty(peak, dtype=torch.uint8, device=self.params[0].device)]
            del temps

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            p.grad = None


@register_optimizer("adamw")
class AdamW(Optimizer):
    """torch.optim.AdamW: single-tensor loop on CPU, foreach on CUDA."""

    hf_name = "adamw_torch"

    def build(self, params, lr, *, foreach=None):
        import torch  # deferred: configs and plans name optimizers without loading torch

        return torch.optim.AdamW(params, lr=lr, foreach=foreach)

    def state_bytes(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        # M_state = 2·Φ·b (+ a 4-byte step tensor per parameter, on the CPU)
        step = STEP_TENSOR_BYTES if device == "cpu" else 0
        return sum(ADAM_MOMENTS * block(n * b) + step for n, b in tensors)

    def step_peak(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        if not tensors:
            return 0
        if device == "cpu":
            # single tensor, in parameter order: denom_i = (v_i.sqrt() / c).add_(eps) holds sqrt(v_i)
            # and its quotient at once, while denom_{i-1} is still bound until the assignment
            sizes = [block(n * b) for n, b in tensors]
            return max(2 * cur + prev for prev, cur in zip([0] + sizes[:-1], sizes))
        # foreach: torch._foreach_sqrt(v) materializes sqrt(v) for every tensor of the group at once
        return sum(block(n * b) for n, b in tensors)

    def state_blocks(self, tensors: Tensors) -> list[int]:
        """Bytes of each state tensor, in the order the first step creates them (exp_avg, exp_avg_sq per parameter)."""
        return [n * b for n, b in tensors for _ in range(ADAM_MOMENTS)]

    def step_blocks(self, tensors: Tensors) -> list[int]:
        """Bytes of each temporary of one foreach step (sqrt(v) of every tensor, held together)."""
        return [n * b for n, b in tensors]


@register_optimizer("sgd")
class SGD(Optimizer):
    """torch.optim.SGD without momentum (torch's default): no state, in-place update."""

    hf_name = "sgd"

    def build(self, params, lr, *, foreach=None):
        import torch  # deferred: configs and plans name optimizers without loading torch

        return torch.optim.SGD(params, lr=lr, foreach=foreach)

    def state_bytes(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        return 0

    def step_peak(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        return 0

    def state_blocks(self, tensors: Tensors) -> list[int]:
        return []

    def step_blocks(self, tensors: Tensors) -> list[int]:
        return []


def _bitsandbytes():
    return load_bitsandbytes("8-bit optimizers")


@register_optimizer("adamw8bit")
class AdamW8bit(Optimizer):
    """bitsandbytes AdamW8bit (``bitsandbytes/optim/optimizer.py``, 0.50: ``Optimizer2State``).

    Two uint8 moments (2 B/param) plus one float32 absmax per block of ``BNB_BLOCK`` elements per
    moment; tensors under ``BNB_MIN_8BIT_SIZE`` elements keep float32 moments (8 B/param). The
    update runs in one fused kernel, in place: no temporaries (on the CPU too, measured with 0.50.2).
    """

    hf_name = "adamw_bnb_8bit"

    def build(self, params, lr, *, foreach=None):
        return _bitsandbytes().optim.AdamW8bit(params, lr=lr)

    def state_bytes(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        total = BNB_QMAP_BYTES if tensors else 0
        for n, _ in tensors:
            if n < BNB_MIN_8BIT_SIZE:
                total += ADAM_MOMENTS * block(n * 4)
            else:
                blocks = -(-n // BNB_BLOCK)
                total += ADAM_MOMENTS * (block(n) + block(blocks * BNB_ABSMAX_BYTES))
        return total

    def step_peak(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        return 0

    def state_blocks(self, tensors: Tensors) -> list[int]:
        out = [BNB_QMAP_BYTES // 2] * 2 if tensors else []
        for n, _ in tensors:
            if n < BNB_MIN_8BIT_SIZE:
                out += [n * 4] * ADAM_MOMENTS
            else:
                out += [n] * ADAM_MOMENTS + [-(-n // BNB_BLOCK) * BNB_ABSMAX_BYTES] * ADAM_MOMENTS
        return out

    def step_blocks(self, tensors: Tensors) -> list[int]:
        return []


@register_optimizer("paged_adamw8bit")
class PagedAdamW8bit(AdamW8bit):
    """bitsandbytes PagedAdamW8bit (torchtune's single-device full recipe): AdamW8bit's state, allocated
    with ``cudaMallocManaged`` (``bitsandbytes/functional.py: get_paged``) outside the caching allocator.
    The driver keeps pages on the device while memory is free and moves them to the host under pressure.
    On the CPU bitsandbytes falls back to ordinary (non-paged) buffers."""

    hf_name = "paged_adamw_8bit"
    paged = True

    def build(self, params, lr, *, foreach=None):
        params = list(params)
        bnb = _bitsandbytes()
        if params and all(p.device.type == "cpu" for p in params):
            # bitsandbytes falls back to ordinary buffers on the CPU (with a warning at the first step): the
            # non-paged class is that same arithmetic and memory
            return bnb.optim.AdamW8bit(params, lr=lr)
        return bnb.optim.PagedAdamW8bit(params, lr=lr)


def get_optimizer(name: str) -> Optimizer:
    """The strategy registered as ``name``."""
    if name not in OPTIMIZERS:
        raise PlannerError(f"--optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, but got {name!r}")
    return OPTIMIZERS[name]()
