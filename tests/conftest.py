import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
# tiny models gain nothing from a second intra-op thread; on a shared machine it only spins (10x slower)
torch.set_num_threads(1)


@pytest.fixture
def tiny():
    """Factory for tiny specs: tiny(model_type, num_layers=4, ...)."""
    from planner.spec.tiny import tiny_spec

    return tiny_spec


@pytest.fixture(scope="module")
def wl():
    """The tiny search workload of the tune tests (tune_helpers.tiny_workload), one per test module."""
    from tune_helpers import tiny_workload

    return tiny_workload()


@pytest.fixture(scope="module")
def target(wl, tmp_path_factory):
    """The tiny model as the target (config.json), costed in float32 at the workload's length, batch 8."""
    from tune_helpers import write_target_config

    return write_target_config(wl, tmp_path_factory.mktemp("target") / "config.json")
