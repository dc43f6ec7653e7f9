"""Device profiles: the constants a GPU adds on top of the bytes tensors hold.

A profile is measured by ``planner profile`` on the target GPU and stored as JSON; estimates
for ``--device cuda`` use the matching profile, or the documented defaults below.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from planner.units import MiB

# Documented defaults when no profile matches, measured on an NVIDIA H200 with torch 2.11 / CUDA 13
# (tests/fixtures/gpu-truth): the device memory a training process holds outside the allocator's
# segments (total - free - memory_reserved after two steps), the largest of 15 configurations
DEFAULT_CONTEXT_BYTES = 804_061_184
# cuBLAS workspace per handle on Hopper (32 MiB); the forward's thread and autograd's each hold one,
# allocated through the caching allocator, so they count in memory_allocated and memory_reserved
DEFAULT_WORKSPACE_BYTES = 2 * 32 * MiB
# reserved/allocated - 1 at the peak: measured by `planner profile` and kept for reference; estimates
# take reserved memory from the allocator model (planner.cost.replay), not from this ratio
DEFAULT_FRAGMENTATION = 0.0


class LayerMeasurement(BaseModel):
    """Bytes measured for one decoder layer in one role during a real training step."""

    model_config = ConfigDict(extra="allow")
    role: str  # e.g. "trainable", "frozen_above", "frozen_below"
    activation_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    weight_bytes: int = 0  # 0 in profiles measured before it was recorded


class DeviceProfile(BaseModel):
    """What one device adds to predicted tensor bytes, and what was measured there."""

    model_config = ConfigDict(extra="allow")
    version: int = 1
    device: str = Field(description="'cpu' or 'cuda'")
    device_name: str = Field(description="torch.cuda.get_device_name(), or 'cpu'")
    total_bytes: int | None = None
    torch_version: str
    context_bytes: int = DEFAULT_CONTEXT_BYTES
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    fragmentation: float = DEFAULT_FRAGMENTATION
    measured_model: str | None = None
    layers: list[LayerMeasurement] = Field(default_factory=list)
    # what `planner profile` measured under, its raw peaks and its cost model checks (None in the defaults)
    measured_batch_size: int | None = None
    measured_seq_len: int | None = None
    measured_dtype: str | None = None
    measured_depths: list[int] | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    peak_requested_bytes: int | None = None
    checks: list[dict] | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DeviceProfile":
        return cls.model_validate_json(Path(path).read_text())


def default_profile(device: str = "cuda") -> DeviceProfile:
    """Documented defaults; for ``cpu`` there is no device overhead."""
    if device == "cpu":
        return DeviceProfile(
            device="cpu",
            device_name="cpu",
            torch_version=torch.__version__,
            context_bytes=0,
            workspace_bytes=0,
            fragmentation=0.0,
        )
    return DeviceProfile(device="cuda", device_name="default", torch_version=torch.__version__)
