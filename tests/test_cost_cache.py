"""Cost-cache entries: schema-versioned and checksummed; an invalid one is recomputed with one warning."""

import json
import warnings

import pytest

from planner.config import TrainConfig
from planner.cost import cache, estimate
from planner.cost.cache import CacheWarning

CFG = TrainConfig(layers=[1], batch_size=1, seq_len=16, train_embeddings=False, train_head=False)


@pytest.fixture
def spec(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", str(tmp_path))
    return tiny("llama", hidden=64, vocab=128)


def _fresh(spec):
    from planner.cost import family, replay

    family._traces.clear()
    replay._memo.clear()
    return estimate(spec, CFG, device="cuda")


def _entries(tmp_path, kind):
    return sorted(tmp_path.glob(f"{kind}-*.json"))


def test_valid_entries_are_reused_without_tracing(spec, tmp_path, monkeypatch):
    first = _fresh(spec)
    assert _entries(tmp_path, "trace") and _entries(tmp_path, "replay")
    import planner.cost.family as fam

    monkeypatch.setattr(fam, "run_trace", lambda *a, **k: pytest.fail("traced again despite a valid cache entry"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        again = _fresh(spec)
    assert again.to_dict() == first.to_dict()


@pytest.mark.parametrize("damage", ["not json", "wrong structure", "old schema", "tampered value"])
def test_invalid_entry_is_recomputed_with_one_warning(spec, tmp_path, damage):
    first = _fresh(spec)
    path = _entries(tmp_path, "trace")[0]
    entry = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{truncated")
    elif damage == "wrong structure":
        path.write_text(json.dumps({"roles": 5}))
    elif damage == "old schema":
        entry["schema"] = cache.CACHE_SCHEMA - 1
        path.write_text(json.dumps(entry))
    else:  # a number changed by hand: the checksum no longer matches
        entry["data"]["input_bytes"] += 4096
        path.write_text(json.dumps(entry))
    with pytest.warns(CacheWarning, match="is invalid") as record:
        again = _fresh(spec)
    assert len(record) == 1 and str(path) in str(record[0].message)
    assert again.to_dict() == first.to_dict()
    assert json.loads(path.read_text())["sha256"]  # rewritten as a valid entry
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        _fresh(spec)


@pytest.mark.parametrize("kw", [dict(), dict(gradient_checkpointing=True, offload_activations=True)])
def test_a_trace_read_back_from_the_cache_is_the_trace_written(spec, tmp_path, kw):
    """Every field survives the cache (a field added to TraceResult once shifted the ones after it)."""
    from planner.cost.family import get_trace
    from planner.cost.segments import TraceResult

    cfg = CFG.model_copy(update=kw)
    traced = get_trace(spec, cfg, ["FA", "T", "FA"] if kw else ["FB", "T0", "FA"], fake=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = TraceResult.from_json(json.loads(json.dumps(traced.to_json())))
    assert back.to_json() == traced.to_json()


def test_a_trace_reads_back_as_it_was_stored():
    """Every field of a trace survives its JSON form: read back by position, a field added in the middle
    shifted the others and no stored trace could be read (each was traced again, with a warning)."""
    from dataclasses import fields

    from planner.cost.segments import Segment, TraceResult

    seg = Segment((1, 2, 3), (4, 5, 6), 7, 8)
    stored = TraceResult(
        roles=["T0", "FA"],
        segments={"embed_fwd": seg},
        layers={"fwd:T0": seg},
        layer_by_index=[{"fwd": seg}, {"bwd": seg}],
        frees_input={"FA": True},
        input_bytes=9,
        x0_held=True,
        x0_kept=True,
        deferred={"FA": (10, 11)},
        peak_bytes=12,
        base_bytes=13,
        params={"layer": [[14, 2, False]]},
        events={"end": {"ev": [["a", 15, 0]]}},
    )
    blank = TraceResult(roles=[])
    assert all(getattr(stored, f.name) != getattr(blank, f.name) for f in fields(TraceResult) if f.compare)
    assert TraceResult.from_json(json.loads(json.dumps(stored.to_json()))) == stored


def test_estimates_in_several_threads_equal_those_made_one_at_a_time(spec, monkeypatch):
    """`planner tune --jobs` gates trials in several threads: traces set the process's default dtype (and, for CUDA,
    the attention and dropout functions), so two at once must not see each other's, nor leave theirs behind."""
    import threading

    import torch

    import torch.nn.functional as F

    from planner.cost import family

    sdpa, dropout = F.scaled_dot_product_attention, F.dropout  # what a CUDA trace swaps for its kernels' stand-ins
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")
    cfgs = [CFG.model_copy(update={"dtype": dt, "seq_len": 16 + i}) for i, dt in enumerate(["bfloat16", "float16"] * 2)]
    alone = [estimate(spec, cfg, device=device).peak_bytes for cfg in cfgs for device in ("cpu", "cuda")]
    for _ in range(5):
        family._traces.clear()
        got: dict[int, int | BaseException] = {}

        def run(i, cfg, device):
            try:
                got[i] = estimate(spec, cfg, device=device).peak_bytes
            except BaseException as exc:  # noqa: BLE001 - compared below
                got[i] = exc

        jobs = [(cfg, device) for cfg in cfgs for device in ("cpu", "cuda")]
        threads = [threading.Thread(target=run, args=(i, *job)) for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        leaked = torch.get_default_dtype(), F.scaled_dot_product_attention, F.dropout
        torch.set_default_dtype(torch.float32)  # a failure here must not leak into the next test
        F.scaled_dot_product_attention, F.dropout = sdpa, dropout
        assert [got[i] for i in range(len(jobs))] == alone and leaked == (torch.float32, sdpa, dropout)
