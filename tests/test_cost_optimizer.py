"""Optimizer strategies: state and step temporaries against a measured optimizer.step()."""

import pytest
import torch

from planner.config import TrainConfig
from planner.cost import LiveBytesTracker
from planner.cost.measure import make_batch, make_optimizer, prepare_model, state_tensors, training_step
from planner.cost.optimizer import OPTIMIZERS, STEP_TENSOR_BYTES, get_optimizer
from planner.errors import PlannerError
from planner.spec import build_model


def _step_temporaries(tiny, optimizer: str, foreach: bool, dtype: str):
    spec = tiny("llama", hidden=64, vocab=256)
    cfg = TrainConfig(layers=[1, 2], optimizer=optimizer, dtype=dtype, batch_size=1, seq_len=16)
    model = prepare_model(build_model(spec, dtype=dtype), cfg, [1, 2])
    opt = make_optimizer(model, cfg, foreach=foreach)
    batch = make_batch(spec.vocab_size, 1, 16)
    training_step(model, opt, batch)  # creates the state
    training_step(model, opt, batch, run_optimizer=False)  # grads exist, state exists
    tensors = [(p.numel(), p.element_size()) for p in model.parameters() if p.requires_grad]
    with LiveBytesTracker() as t:
        t.track(state_tensors(model, opt, batch) + [p.grad for p in model.parameters() if p.grad is not None])
        start = t.current_bytes
        state = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
        opt.step()
    return t.peak_bytes - start, state, tensors


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adamw_single_tensor_temporaries_and_state(tiny, dtype):
    measured, state, tensors = _step_temporaries(tiny, "adamw", False, dtype)
    adamw = get_optimizer("adamw")
    assert measured == adamw.step_peak(tensors, "cpu")
    assert state == adamw.state_bytes(tensors, "cpu")


def test_adamw_foreach_temporaries_are_sqrt_of_every_v(tiny):
    # CUDA runs the foreach path; on CPU it materializes the same list of sqrt(v) tensors
    measured, _, tensors = _step_temporaries(tiny, "adamw", True, "float32")
    predicted = get_optimizer("adamw").step_peak(tensors, "cuda")
    # the CPU foreach path also wraps the step increment in one float32 scalar tensor
    assert predicted <= measured <= predicted + STEP_TENSOR_BYTES


def test_sgd_has_no_state_and_no_temporaries(tiny):
    measured, state, tensors = _step_temporaries(tiny, "sgd", False, "float32")
    assert measured == 0 and state == 0
    assert get_optimizer("sgd").state_bytes(tensors, "cpu") == 0


def test_registry_contract():
    for name, opt in OPTIMIZERS.items():
        assert opt.name == name
        tensors = [(4096 * 4, 2), (64, 2)]
        assert opt.state_bytes(tensors, "cuda") >= 0 and opt.step_peak(tensors, "cuda") >= 0
        assert opt.state_bytes([], "cpu") == 0 and opt.step_peak([], "cpu") == 0
    with pytest.raises(PlannerError, match="optimizer must be one of"):
        get_optimizer("lion")
