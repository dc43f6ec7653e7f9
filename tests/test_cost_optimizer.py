"""Optimizer strategies: state and step temporaries against a measured optimizer.step()."""

import pytest

from planner.config import TrainConfig
from planner.cost import LiveBytesTracker
from planner.cost.measure import make_batch, make_optimizer, prepare_model, state_tensors, training_step
from planner.optimizers import OPTIMIZERS, STEP_TENSOR_BYTES, get_optimizer
from planner.errors import PlannerError
from planner.spec import build_model


def _step_temporaries(tiny, optimizer: str, foreach: bool, dtype: str, build=None):
    """(step temporaries, state bytes, trainable tensors) of one measured step; ``build(params)``: another way to make
    the optimizer than planner's."""
    spec = tiny("llama", hidden=64, vocab=256)
    cfg = TrainConfig(layers=[1, 2], optimizer=optimizer, dtype=dtype, batch_size=1, seq_len=16)
    model = prepare_model(build_model(spec, dtype=dtype), cfg, [1, 2])
    if build is None:
        opt = make_optimizer(model, cfg, foreach=foreach)
    else:
        opt = build([p for p in model.parameters() if p.requires_grad])
    batch = make_batch(spec.vocab_size, 1, 16)
    training_step(model, opt, batch)  # creates the state
    training_step(model, opt, batch, run_optimizer=False)  # grads exist, state exists
    tensors = [(p.numel(), p.element_size()) for p in model.parameters() if p.requires_grad]
    with LiveBytesTracker() as t:
        t.track(state_tensors(model, opt, batch) + [p.grad for p in model.parameters() if p.grad is not None])
        start = t.current_bytes
        kept = {
            t.untyped_storage()._cdata: t
            for t in state_tensors(model, opt)[len(list(model.parameters())) + len(list(model.buffers())) :]
        }
        state = sum(t.untyped_storage().nbytes() for t in kept.values())
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


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_registered_optimizer_state_and_step_against_its_library(tiny, name):
    """Each strategy's state and step temporaries against its own class stepping on CPU (bitsandbytes
    runs its 8-bit optimizers there; the paged one falls back to ordinary buffers, the same bytes)."""
    measured, state, tensors = _step_temporaries(tiny, name, False, "float32")
    opt = get_optimizer(name)
    assert state == opt.state_bytes(tensors, "cpu")
    assert measured == opt.step_peak(tensors, "cpu")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_hf_trainer_builds_the_same_optimizer_for_its_name(tiny, name, tmp_path):
    """``hf_name`` as an exported plan passes it (TrainingArguments ``optim``): the optimizer the Trainer's own
    mapping builds for it keeps the state and makes the temporaries this strategy counts, paged where it is paged."""
    from transformers import Trainer, TrainingArguments

    opt = get_optimizer(name)
    args = TrainingArguments(output_dir=str(tmp_path), optim=opt.hf_name, use_cpu=True, report_to=[])
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert kwargs.get("is_paged", False) == opt.paged
    measured, state, tensors = _step_temporaries(
        tiny, name, False, "float32", build=lambda params: cls(params, **kwargs)
    )
    assert state == opt.state_bytes(tensors, "cpu")
    assert measured == opt.step_peak(tensors, "cpu")


def test_unknown_optimizer_is_refused_with_the_rule():
    with pytest.raises(PlannerError, match="--optimizer must be one of"):
        get_optimizer("lion")


def test_bitsandbytes_loads_without_its_hub_kernel_warning():
    """On CPUs with AVX512-BF16 bitsandbytes asks the hub for a kernel as it is imported and, offline, warns in one
    long line; the planner's import keeps that line off the terminal (elsewhere there is no line to keep off)."""
    import subprocess
    import sys

    def stderr(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr

    line = "Failed to load CPU gemm_4bit_forward"
    if line not in stderr("import bitsandbytes"):
        pytest.skip("bitsandbytes asks the hub for no kernel on this CPU")
    assert line not in stderr("from planner.bnb import load_bitsandbytes; load_bitsandbytes('8-bit optimizers')")
    # the command quiets it for every importer (peft's and transformers' quantization paths import bitsandbytes too)
    assert line not in stderr("import planner.cli.main as m; m.quiet_hub_kernel_warning(); import bitsandbytes")
