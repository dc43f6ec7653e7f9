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
    from planner.cost import estimator, replay

    estimator._traces.clear()
    replay._memo.clear()
    return estimate(spec, CFG, device="cuda")


def _entries(tmp_path, kind):
    return sorted(tmp_path.glob(f"{kind}-*.json"))


def test_valid_entries_are_reused_without_tracing(spec, tmp_path, monkeypatch):
    first = _fresh(spec)
    assert _entries(tmp_path, "trace") and _entries(tmp_path, "replay")
    import planner.cost.estimator as est

    monkeypatch.setattr(est, "run_trace", lambda *a, **k: pytest.fail("traced again despite a valid cache entry"))
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
