"""Layer-wise training runtime: the layer sampler, its scorers, a plain loop and an HF callback."""

from planner.sampling.loop import DivergedError, TrainResult, train_layerwise
from planner.sampling.sampler import LayerSampler
from planner.sampling.scorers import SCORERS, Scorer, get_scorer, register_scorer

__all__ = [
    "DivergedError",
    "LayerSampler",
    "SCORERS",
    "Scorer",
    "TrainResult",
    "get_scorer",
    "register_scorer",
    "train_layerwise",
]


def __getattr__(name):
    if name == "LayerwiseCallback":  # transformers is heavy: import on use
        from planner.sampling.hf import LayerwiseCallback

        return LayerwiseCallback
    raise AttributeError(name)
