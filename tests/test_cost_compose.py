"""Composition: depth independence of segments, fake vs real traces, the sampler's worst case, API contract."""

import itertools

import pytest
import torch

from planner.config import TrainConfig
from planner.cost import LiveBytesTracker, estimate, measure_training_peak
from planner.cost.family import get_trace
from planner.cost.measure import make_batch, make_optimizer, prepare_model, training_step
from planner.errors import PlannerError
from planner.plan import BREAKDOWN_KEYS
from planner.spec import build_model

CFG = dict(batch_size=2, seq_len=64)


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


def test_segments_do_not_depend_on_depth_or_position(tiny):
    spec = tiny("llama", hidden=64, vocab=256)
    cfg = TrainConfig(layers="all", **CFG)
    t3 = get_trace(spec, cfg, ["T", "FA", "T"])
    t2 = get_trace(spec, cfg, ["FA", "T"])
    t4 = get_trace(spec, cfg, ["T", "FA", "T", "FA"])
    for key in ("fwd:T", "bwd:T", "fwd:FA", "bwd:FA"):
        assert t2.layers[key] == t3.layers[key] == t4.layers[key], key
    assert t3.layer_by_index[0]["fwd"] == t3.layer_by_index[2]["fwd"]  # T at positions 0 and 2
    for name in ("embed_fwd", "head_fwd", "head_bwd", "embed_bwd", "shared_release"):
        assert t2.segments[name] == t3.segments[name] == t4.segments[name], name


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("kernels", ["cpu", "cuda"])
def test_fake_trace_equals_real_trace(tiny, kernels, checkpointing, monkeypatch):
    from planner.cost import family

    spec = tiny("qwen2", hidden=64, vocab=256)
    cfg = TrainConfig(layers=[1], train_embeddings=False, train_head=False, gradient_checkpointing=checkpointing, **CFG)
    roles = ["FA", "T", "FA"] if checkpointing else ["FB", "T0", "FA"]  # checkpointing: every layer backpropagates
    traces = {}
    for fake in (False, True):
        monkeypatch.setattr(family, "_traces", {})  # the in-process cache's key does not tell fake from real
        traces[fake] = get_trace(spec, cfg, roles, fake=fake, kernels=kernels)
    real, fake = traces[False], traces[True]
    assert real is not fake and real.layers == fake.layers and real.segments == fake.segments


@pytest.mark.parametrize("arch,train_embeddings", [("llama", False), ("llama", True), ("gpt2", False)])
def test_worst_case_matches_brute_force_over_all_draws(tiny, arch, train_embeddings):
    spec = tiny(arch, num_layers=6, hidden=64, vocab=256)
    for active_layers, min_depth in [(1, 0), (2, 0), (2, 1), (3, 1)]:
        cfg = TrainConfig(
            active_layers=active_layers,
            min_depth=min_depth,
            train_embeddings=train_embeddings,
            train_head=train_embeddings,
            **CFG,
        )
        est = estimate(spec, cfg, device="cpu")
        assert len(est.trainable_layers) == active_layers and min(est.trainable_layers) >= min_depth
        brute = 0
        for draw in itertools.combinations(range(min_depth, 6), active_layers):
            static = TrainConfig(
                layers=list(draw), train_embeddings=train_embeddings, train_head=train_embeddings, **CFG
            )
            brute = max(brute, estimate(spec, static, device="cpu").peak_bytes)
        assert est.peak_bytes == brute, (active_layers, min_depth)


def test_estimate_contract(tiny):
    spec = tiny("gpt2", hidden=64, vocab=256)
    cfg = TrainConfig(layers=[1, 2], train_embeddings=False, **CFG)
    cpu = estimate(spec, cfg, device="cpu")
    cuda = estimate(spec, cfg, device="cuda")
    for est in (cpu, cuda):
        d = est.to_dict()
        assert set(d["breakdown"]) == set(BREAKDOWN_KEYS) and d["peak_bytes"] == est.peak_bytes
        assert d["trainable_layers"] == [1, 2] and d["phase"]
    assert cpu.breakdown.overhead == 0 and cuda.breakdown.overhead > 0
    assert cuda.allocated_bytes >= cpu.peak_bytes  # 512-byte blocks only add
    assert cuda.reserved_bytes >= cuda.allocated_bytes  # segments hold blocks
    # the CPU figures against the model and optimizer running: two real AdamW steps, torch's own tensors
    # (the CUDA peak is held against a GPU's counters in test_cost_gpu_fixture.py)
    batch = make_batch(spec.vocab_size, CFG["batch_size"], CFG["seq_len"])
    model = prepare_model(build_model(spec), cfg, [1, 2])
    opt = make_optimizer(model, cfg)
    for _ in range(2):
        training_step(model, opt, batch)
    storages = {
        t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]
    }
    state = sum(v.untyped_storage().nbytes() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    assert cpu.breakdown.weights == cuda.breakdown.weights == sum(storages.values())
    assert cpu.breakdown.optimizer == state > 0
    assert cpu.peak_bytes == measure_training_peak(build_model(spec), cfg, batch)


def test_adamw8bit_state_is_a_quarter_of_adamw_fp32(tiny):
    spec = tiny("llama", hidden=128, vocab=512)
    base = dict(layers="all", **CFG)
    full = estimate(spec, TrainConfig(optimizer="adamw", **base), device="cpu").breakdown.optimizer
    q8 = estimate(spec, TrainConfig(optimizer="adamw8bit", **base), device="cpu").breakdown.optimizer
    assert 0.25 <= q8 / full < 0.30  # 2 B/param + absmax per 256 + fp32 state of small tensors vs 8 B/param


def test_bad_input_is_one_clear_error(tiny):
    spec = tiny("llama")
    with pytest.raises(PlannerError, match="device"):
        estimate(spec, TrainConfig(layers="all"), device="tpu")
    with pytest.raises(PlannerError, match="active_layers"):
        estimate(spec, TrainConfig(active_layers=5), device="cpu")
    with pytest.raises(PlannerError, match="train something"):
        estimate(spec, TrainConfig(train_embeddings=False, train_head=False), device="cpu")


def test_tracker_counts_storages_once_and_frees():
    with LiveBytesTracker() as t:
        a = torch.empty(1000)  # 4000 B
        v = a.view(10, 100)  # same storage
        b = a * 2  # 4000 B
        assert t.current_bytes == 8000
        del a
        assert t.current_bytes == 8000  # the view keeps the storage alive
        del v
        assert t.current_bytes == 4000
        del b
    assert t.peak_bytes == 8000


def test_tracker_under_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), LiveBytesTracker() as t:
        x = torch.empty(1 << 28, dtype=torch.bfloat16)  # 512 MiB, never allocated
        y = x + 1
        del y
    assert t.peak_bytes == 2 * (1 << 29)
