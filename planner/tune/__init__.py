"""`planner tune`: an Optuna search of layer-wise plans under a memory budget.

``run_tune(TuneOptions(vram="24GB"))`` plans the target (default: Llama-3-8B in bfloat16) for the
budget: it predicts every trial's peak for the target before training, never trains a trial over
budget, trains the rest briefly on a proxy (the target itself, a smaller model, or the built-in
one), and writes the best plan for the target.
"""

from planner.tune.study import DEFAULT_N_TRIALS, DEFAULT_STEPS, InfeasibleBudget, TuneOptions, run_tune

__all__ = ["DEFAULT_N_TRIALS", "DEFAULT_STEPS", "InfeasibleBudget", "TuneOptions", "run_tune"]
