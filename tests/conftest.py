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
