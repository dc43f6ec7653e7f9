"""Workloads for proxy fine-tuning: the embedded default and users' own model and data."""

from planner.data.load import load_workload
from planner.data.workload import Example, Workload

__all__ = ["Example", "Workload", "load_workload"]
