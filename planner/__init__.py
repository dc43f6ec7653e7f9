"""planner: memory-budget planner and autotuner for layer-wise sparse fine-tuning."""

__version__ = "0.1.0"
