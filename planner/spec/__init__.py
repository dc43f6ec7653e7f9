"""Model specifications: what a model is, from a preset, a config.json, a directory or a hub id."""

from planner.spec.arch import find_decoder_layers, layers_attribute
from planner.spec.model import ModelSpec, build_model, list_presets, load_spec

__all__ = ["ModelSpec", "build_model", "find_decoder_layers", "layers_attribute", "list_presets", "load_spec"]
