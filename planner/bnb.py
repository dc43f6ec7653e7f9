"""bitsandbytes, imported where a lever runs it: 8-bit optimizers and quantized base weights."""

from __future__ import annotations

import logging
from types import ModuleType

from planner.errors import PlannerError

# bitsandbytes' CPU backend, on CPUs with AVX512-BF16, asks the Hugging Face hub for an optional 4-bit matmul kernel
# as it is imported; offline or unverified it warns in one long line and runs its own kernel, the one it runs
# elsewhere. Its answer is the same either way, so the line is kept off the terminal.
_HUB_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


def quiet_hub_kernel_warning() -> None:
    """Keep bitsandbytes' hub-kernel line off the terminal, whoever imports it (peft and transformers do too)."""
    logging.getLogger(_HUB_KERNEL_LOGGER).setLevel(logging.ERROR)


def load_bitsandbytes(needed_for: str) -> ModuleType:
    """bitsandbytes, or a :class:`PlannerError` naming ``needed_for`` and the install command when it is absent."""
    quiet_hub_kernel_warning()
    try:
        import bitsandbytes  # deferred: it imports torch, and only the levers that run it need it
    except ImportError:
        raise PlannerError(
            f"{needed_for} runs bitsandbytes, which must be installed (pip install bitsandbytes), but it is not"
        ) from None
    return bitsandbytes
