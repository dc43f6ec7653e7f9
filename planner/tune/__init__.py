"""`planner tune`: an Optuna search of layer-wise plans under a memory budget.

``run_tune(TuneOptions(vram="24GB"))`` plans the target (default: Llama-3-8B in bfloat16) for the
budget: it predicts every trial's peak for the target before training, never trains a trial over
budget, trains the rest briefly on a proxy (the target itself, a smaller model, or the built-in
one), and writes the best plan for the target.
"""

from __future__ import annotations

import importlib

# resolved on first use (PEP 562): `planner tune --help` reads planner.tune.options without loading torch and
# optuna, which the study modules import at their top
_EXPORTS = {
    "DEFAULT_N_TRIALS": "planner.tune.options",
    "DEFAULT_STEPS": "planner.tune.options",
    "TuneOptions": "planner.tune.options",
    "InfeasibleBudget": "planner.tune.target_space",
    "run_tune": "planner.tune.run",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
