"""`planner tune`: an Optuna search of layer-wise plans under a memory budget.

``run_tune(TuneOptions(vram="24GB"))`` predicts every trial's peak before training, never trains
a trial over budget, trains the rest briefly on the workload, and writes the best plan.
"""

from planner.tune.study import DEFAULT_N_TRIALS, DEFAULT_STEPS, InfeasibleBudget, TuneOptions, run_tune

__all__ = ["DEFAULT_N_TRIALS", "DEFAULT_STEPS", "InfeasibleBudget", "TuneOptions", "run_tune"]
