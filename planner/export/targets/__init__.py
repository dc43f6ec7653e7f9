"""One module per target trainer; importing this package registers them all."""

from planner.export.targets import axolotl, hf, llamafactory, lmflow, peft, planner, swift  # noqa: F401  (registration)
