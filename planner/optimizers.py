"""Optimizer state and optimizer-step temporaries, one strategy per optimizer, registered by name.

Each strategy answers, for the trainable tensors ``(numel, bytes_per_element)`` in parameter order:
``state_bytes`` (alive during the whole step) and ``step_peak`` (temporaries on top of
weights + grads + state while ``optimizer.step()`` runs). ``block`` is how a device counts one
tensor's bytes (identity on CPU, 512-byte rounding on CUDA).
"""

from __future__ import annotations

from typing import Callable, Sequence

Tensors = Sequence[tuple[int, int]]  # (numel, bytes per element)
STEP_TENSOR_BYTES = 4  # torch keeps AdamW's `step` as a float32 scalar tensor on the CPU (not capturable)
ADAM_MOMENTS = 2  # m and v (Kingma & Ba 2015), in the parameter's dtype in torch
BNB_BLOCK = 256  # bitsandbytes blockwise 8-bit optimizer block (2048 in releases before 0.44)
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors smaller than this
BNB_ABSMAX_BYTES = 4  # one float32 absmax per block per moment
BNB_QMAP_BYTES = 2 * 256 * 4  # the two dynamic quantization maps, shared by all tensors


def _identity(n: int) -> int:
    return n


class AdamW:
    """torch.optim.AdamW: single-tensor loop on CPU, foreach on CUDA."""

    name = "adamw"

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


class SGD:
    """torch.optim.SGD without momentum (torch's default): no state, in-place update."""

    name = "sgd"

    def state_bytes(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        return 0

    def step_peak(self, tensors: Tensors, device: str, block: Callable[[int], int] = _identity) -> int:
        return 0

    def state_blocks(self, tensors: Tensors) -> list[int]:
        return []

    def step_blocks(self, tensors: Tensors) -> list[int]:
        return []


class AdamW8bit:
    """bitsandbytes AdamW8bit (analytic; bitsandbytes needs a GPU).

    Two uint8 moments (2 B/param) plus one float32 absmax per block of ``BNB_BLOCK`` elements per
    moment; tensors under ``BNB_MIN_8BIT_SIZE`` elements keep float32 moments (8 B/param). The
    update runs in one fused kernel, in place: no temporaries.
    """

    name = "adamw8bit"

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


OPTIMIZERS = {cls.name: cls() for cls in (AdamW, SGD, AdamW8bit)}


def get_optimizer(name: str):
    from planner.errors import PlannerError

    if name not in OPTIMIZERS:
        raise PlannerError(f"optimizer must be one of {sorted(OPTIMIZERS)}, but got {name!r}")
    return OPTIMIZERS[name]
