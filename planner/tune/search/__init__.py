"""The search: the space of layer-wise plans, Optuna's samplers bounded by the budget, the gate that predicts every
trial's peak before training, the memory-only forms a point may run in, and per-trial seeding."""
