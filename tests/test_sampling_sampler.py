"""LayerSampler: parts, switching, state release, flat memory, LoRA, options."""

from __future__ import annotations

import pytest
import torch

from planner.errors import PlannerError
from planner.sampling import LayerSampler, train_layerwise
from planner.spec.parts import model_parts
from planner.spec import build_model, find_decoder_layers


def batch(vocab=256, b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, s), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def state_bytes(model, optimizer) -> int:
    """Bytes of parameters, gradients and optimizer-state tensors (unique storages)."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma"])
def test_parts_cover_every_parameter_once(tiny, arch):
    model = build_model(tiny(arch, num_layers=3))
    parts = model_parts(model)
    _, layers = find_decoder_layers(model)
    assert parts.layers is layers and parts.num_layers == 3
    ids = [id(p) for ps in parts.layer_params for p in ps] + [id(p) for p in parts.embeddings]
    ids += [id(p) for p in parts.head_params if id(p) not in {id(q) for q in parts.embeddings}]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert id(model.get_input_embeddings().weight) in {id(p) for p in parts.embeddings}
    assert parts.final_norm is not None
    assert id(model.get_output_embeddings().weight) in {id(p) for p in parts.head_params}
    if arch == "gpt2":  # positional embeddings are embeddings too
        assert id(model.transformer.wpe.weight) in {id(p) for p in parts.embeddings}


def test_requires_grad_follows_active_set_and_options(tiny):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=2, period=5, train_embeddings=False, train_head=True, seed=1)
    for i, layer in enumerate(s.parts.layers):
        assert all(p.requires_grad == (i in s.active) for p in layer.parameters())
    assert not model.get_input_embeddings().weight.requires_grad
    assert model.get_output_embeddings().weight.requires_grad
    assert all(p.requires_grad for p in s.parts.final_norm.parameters())
    LayerSampler(model, active_layers=1, train_embeddings=True, train_head=False)
    assert model.get_input_embeddings().weight.requires_grad and not model.get_output_embeddings().weight.requires_grad


def test_tied_head_weight_is_the_embedding_weight(tiny):
    model = build_model(tiny("qwen2", num_layers=2))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    s = LayerSampler(model, active_layers=1, train_embeddings=False, train_head=True)
    assert model.get_input_embeddings().weight.requires_grad  # trains as the head
    s = LayerSampler(model, active_layers=1, train_embeddings=False, train_head=False)
    assert not model.get_input_embeddings().weight.requires_grad
    assert not any(p.requires_grad for p in s.parts.final_norm.parameters())


def test_switch_releases_gradients_and_optimizer_state(tiny):
    model = build_model(tiny("llama", num_layers=4))
    s = LayerSampler(model, active_layers=1, period=1, scorer="cyclic")
    opt = s.make_optimizer(torch.optim.AdamW, lr=1e-3)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    b = batch()
    for step in range(3):
        model(**b).loss.backward()
        opt.step()
        active_ids = {id(p) for p in s.trainable_parameters()}
        assert {id(p) for p in opt.state} == active_ids  # state exists for what trains, only
        assert all((p.grad is not None) == (id(p) in active_ids) for p in model.parameters())
        s.begin_step(step + 1)  # the next draw comes before zero_grad here: the leaving layer's grads go with it
        left = [i for i in range(4) if i not in s.active]
        assert all(p.grad is None and p not in opt.state for i in left for p in s.parts.layer_params[i])
        opt.zero_grad(set_to_none=True)
    assert s.switches == 3 and [h["active"] for h in s.history] == [[0], [1], [2], [3]]


def _run_and_measure(model, sampler, steps, tracker=None):
    opt = sampler.make_optimizer(torch.optim.AdamW, lr=1e-3)
    b = batch(s=8)
    direct, tracked = [], []
    if tracker is not None:
        tracker.track(list(model.parameters()) + list(model.buffers()) + list(b.values()))
        tracked.append(tracker.current_bytes)  # before any step: weights, buffers, the batch
        tracker.__enter__()
    try:
        for step in range(steps):
            sampler.begin_step(step)
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            direct.append(state_bytes(model, opt))
            tracked.append(tracker.current_bytes if tracker is not None else 0)
    finally:
        if tracker is not None:
            tracker.__exit__(None, None, None)
    return opt, direct, tracked


def test_live_memory_flat_over_200_switches(tiny):
    """Live storage bytes after each step stay constant over 200 switches (every step switches)."""
    from planner.cost import LiveBytesTracker

    model = build_model(tiny("llama", num_layers=3, hidden=32))
    s = LayerSampler(model, active_layers=1, period=1, scorer="cyclic")
    tracker = LiveBytesTracker()
    opt, direct, tracked = _run_and_measure(model, s, 201, tracker)
    assert s.switches == 200
    base, after = tracked[0], tracked[1:]
    assert max(after) == min(after), f"live bytes drifted: {min(after)}..{max(after)}"
    assert len(set(direct)) == 1, f"state bytes drifted: {sorted(set(direct))}"
    # exactly AdamW's state for what trains now: exp_avg + exp_avg_sq (fp32) and a 4-byte step per parameter;
    # a sampler that kept the moments of every visited layer would hold two more layers of them
    adamw = sum(2 * 4 * p.numel() + 4 for p in s.trainable_parameters())
    assert after[-1] - base == adamw


def test_state_bytes_flat_over_300_uniform_switches(tiny):
    model = build_model(tiny("llama", num_layers=4, hidden=32))
    s = LayerSampler(model, active_layers=2, period=1, scorer="uniform", seed=3)
    opt, direct, _ = _run_and_measure(model, s, 360)
    assert s.switches >= 200  # a uniform draw of 2 of 4 layers repeats the set ~1/6 of the time
    assert len({tuple(h["active"]) for h in s.history}) == 6
    assert len(set(direct[1:])) == 1, f"state bytes drifted: {sorted(set(direct))}"


def test_min_depth_bounds_every_draw(tiny):
    model = build_model(tiny("llama", num_layers=6))
    s = LayerSampler(model, active_layers=2, period=1, scorer="uniform", min_depth=3, seed=0)
    for step in range(1, 60):
        s.begin_step(step)
    drawn = {i for h in s.history for i in h["active"]}
    assert drawn == {3, 4, 5}
    assert all(h["weights"][:3] == [0.0, 0.0, 0.0] for h in s.history)


def test_bad_options_are_reported_together(tiny):
    model = build_model(tiny("llama", num_layers=4))
    with pytest.raises(PlannerError) as err:
        LayerSampler(model, active_layers=0, period=0)
    assert "active_layers" in str(err.value) and "period" in str(err.value)
    with pytest.raises(PlannerError, match="active_layers <= num_layers - min_depth"):
        LayerSampler(model, active_layers=3, min_depth=2)
    with pytest.raises(PlannerError, match="min_depth"):
        LayerSampler(model, active_layers=1, min_depth=4)
    with pytest.raises(PlannerError, match="scorer must be one of"):
        LayerSampler(model, scorer="nope")
    with pytest.raises(PlannerError, match="unknown"):
        LayerSampler(model, scorer="uniform", scorer_options={"bogus": 1})


def test_lora_only_active_adapters_train(tiny):
    from peft import LoraConfig, get_peft_model

    base = build_model(tiny("llama", num_layers=4))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    s = LayerSampler(model, active_layers=1, period=4, scorer="cyclic", train_embeddings=False, train_head=False)
    assert s.parts.adapters
    assert all("lora_" in n for names in s.parts.layer_param_names for n in names)
    opt = s.make_optimizer(torch.optim.AdamW, lr=1e-2)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_layerwise(model, [batch()], sampler=s, optimizer=opt, steps=4)
    assert len(result.losses) == 4
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n and ".layers.0." in n for n in changed)
    assert {id(p) for p in opt.state} <= {id(p) for p in s.parts.layer_params[0]}


def test_the_optimizer_steps_the_managed_parameters_in_the_models_order(tiny):
    """The first optimizer step's peak holds the temporaries of the tensor stepped last, so an optimizer built by the
    sampler must step in the order the cost model's (the model's trainable parameters) does."""
    model = build_model(tiny("llama", num_layers=3))
    s = LayerSampler(model, active_layers=1, period=3, train_embeddings=True, train_head=True)
    managed = {id(p) for p in s.managed_parameters()}
    assert [id(p) for p in s.managed_parameters()] == [id(p) for p in model.parameters() if id(p) in managed]
    opt = s.make_optimizer(torch.optim.AdamW, lr=1e-3)
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in s.managed_parameters()]
