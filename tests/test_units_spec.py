import json
import time

import pytest

from planner.errors import PlannerError
from planner.spec import build_model, find_decoder_layers, list_presets, load_spec
from planner.units import GiB, parse_bytes


@pytest.mark.parametrize(
    "text,expected",
    [
        ("24GB", 24 * 1000**3),
        ("24GiB", 24 * GiB),
        ("24G", 24 * GiB),
        ("24000MiB", 24000 * 1024**2),
        ("1.5 gib", 1_610_612_736),
        ("512B", 512),
        ("24 GB", 24 * 1000**3),
        ("2T", 2 * 1024**4),
        ("1.5KB", 1500),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "text,needle",
    [
        ("0", "must be > 0 bytes, but got '0'"),
        ("-3GB", "must be > 0 bytes, but got '-3GB'"),
        ("0GiB", "must be > 0 bytes"),
        ("0.4B", "must be > 0 bytes"),
        ("abc", "must be a number with a unit"),
        ("24XB", "must be a number with a unit"),
        ("", "must be a number with a unit"),
        ("24", "but got the bare number '24'"),
        ("512", "bytes are 512B"),
        ("1e400GB", "must be at most 1,152,921,504,606,846,976 bytes"),
        ("2EiB", "must be a number with a unit"),
        ("1e30B", "must be at most"),
        ("nan", "must be a number with a unit"),
    ],
)
def test_parse_bytes_rejects(text, needle):
    with pytest.raises(PlannerError) as err:
        parse_bytes(text)
    assert str(err.value).startswith("--vram ") and needle in str(err.value) and "\n" not in str(err.value)


def test_parse_bytes_numbers_are_bytes():
    """A Python number (not text from a flag) is a byte count."""
    assert parse_bytes(24 * GiB) == 24 * GiB
    with pytest.raises(PlannerError, match="> 0 bytes"):
        parse_bytes(float("nan"))


def test_presets_resolve_by_name_and_hub_id():
    presets = list_presets()
    for name in [
        "llama-2-7b",
        "llama-2-13b",
        "llama-2-70b",
        "llama-3-8b",
        "llama-3-70b",
        "mistral-7b",
        "qwen2.5-0.5b",
        "qwen2.5-7b",
        "gemma-2b",
        "gemma-7b",
        "phi-3-mini",
        "gpt2",
    ]:
        assert name in presets
        assert load_spec(name).name == name
        assert load_spec(presets[name]["hub_id"]).name == name
    assert load_spec("llama-2-7b").num_layers == 32


def test_load_spec_from_config_file_and_directory(tmp_path, tiny):
    spec = tiny("qwen2")
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(spec.config.to_dict()))
    assert load_spec(str(d)).num_layers == 4
    assert load_spec(str(d / "config.json")).model_type == "qwen2"
    with pytest.raises(PlannerError, match="config.json"):
        load_spec(str(tmp_path))


def test_unknown_model_is_one_line_error():
    with pytest.raises(PlannerError, match="must be a preset"):
        load_spec("not-a-model")


@pytest.mark.parametrize("arch,path", [("llama", "model.layers"), ("gpt2", "transformer.h"), ("qwen2", "model.layers")])
def test_layers_attribute_detected(tiny, arch, path):
    model = build_model(tiny(arch, num_layers=3))
    name, layers = find_decoder_layers(model)
    assert name == path and len(layers) == 3


def _write_config(directory, config) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_dict()))
    return str(directory)


def test_encoder_only_and_encoder_decoder_models_are_refused(tmp_path):
    from transformers import BertConfig, T5Config

    bert = _write_config(
        tmp_path / "bert",
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99),
    )
    with pytest.raises(PlannerError, match="decoder-only causal LM.*'bert': an encoder-only"):
        load_spec(bert)
    with pytest.raises(PlannerError, match="encoder-only"):
        load_spec(bert + "/config.json")
    t5 = _write_config(tmp_path / "t5", T5Config(d_model=32, num_layers=2, num_heads=2, d_ff=64, vocab_size=99))
    with pytest.raises(PlannerError, match="'t5': an encoder-decoder model"):
        load_spec(t5)


def test_unreadable_model_files_are_one_line(tmp_path):
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(PlannerError, match="--model file must be a JSON config, but .*weights.bin' is not .*utf-8"):
        load_spec(str(binary))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(PlannerError, match="must be a JSON object, but .*list.json' holds list"):
        load_spec(str(listed))
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": "many"}))
    with pytest.raises(PlannerError, match="model_type 'llama' failed"):
        load_spec(str(odd))


def test_sequence_length_within_the_models_positions(tiny):
    from planner.spec.model import seq_len_problem

    gpt2 = load_spec("gpt2")
    assert gpt2.max_positions == ("n_positions", 1024)
    assert seq_len_problem(gpt2, 1024) is None
    assert "--seq-len must be <= the model's n_positions=1,024 (gpt2), but got 1,025" in seq_len_problem(gpt2, 1025)
    assert load_spec("llama-2-7b").max_positions == ("max_position_embeddings", 4096)
    assert tiny("llama").max_positions == ("max_position_embeddings", 1024)


@pytest.fixture
def network(monkeypatch):
    """What the code under test does on the network and how it waits: every name lookup, every connect (with its
    outcome) and every sleep, recorded as they happen, in any thread."""
    import socket

    seen = {"lookups": [], "connects": [], "sleeps": []}
    lookup, connect, sleep = socket.getaddrinfo, socket.socket.connect, time.sleep

    def recorded_lookup(host, port, *args, **kwargs):
        seen["lookups"].append((host, port))
        return lookup(host, port, *args, **kwargs)

    def recorded_connect(sock, address):
        try:
            connect(sock, address)
        except OSError as exc:
            seen["connects"].append((address, type(exc).__name__))
            raise
        seen["connects"].append((address, None))

    def recorded_sleep(seconds):
        seen["sleeps"].append(seconds)
        sleep(seconds)

    monkeypatch.setattr(socket, "getaddrinfo", recorded_lookup)
    monkeypatch.setattr(socket.socket, "connect", recorded_connect)
    monkeypatch.setattr(time, "sleep", recorded_sleep)
    return seen


def test_offline_hub_lookup_fails_at_once(monkeypatch, network):
    """With HF_HUB_OFFLINE (set for the tests) a hub id that is not cached fails without a connection or a retry."""
    from planner.spec import hub

    hub.hub_unreachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PlannerError) as err:
        load_spec("nobody-here/no-such-model")
    assert network == {"lookups": [], "connects": [], "sleeps": []}
    msg = str(err.value)
    assert "'nobody-here/no-such-model' is not cached" in msg and "(HF_HUB_OFFLINE=1)" in msg and "\n" not in msg
    hub.hub_unreachable.cache_clear()


def test_unreachable_hub_is_probed_once_and_fails_fast(monkeypatch, network):
    """No offline variable: one TCP connect to the endpoint decides (here a closed local port), refused, never retried."""
    from planner.spec import hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    hub.hub_unreachable.cache_clear()
    calls = []

    def loader(name, local_files_only):
        calls.append(local_files_only)
        raise OSError("not in the cache")

    with pytest.raises(PlannerError, match=r"http://127.0.0.1:9 cannot be reached \(127.0.0.1:9: "):
        hub.from_hub(loader, "org/model")
    assert calls == [True]  # the cache only: the hub was never asked
    assert network == {
        "lookups": [("127.0.0.1", 9)],
        "connects": [(("127.0.0.1", 9), "ConnectionRefusedError")],
        "sleeps": [],
    }
    hub.hub_unreachable.cache_clear()


def test_reachable_hub_is_asked_after_a_cache_miss(monkeypatch):
    from planner.spec import hub

    monkeypatch.setattr(hub, "hub_unreachable", lambda: None)
    calls = []

    def loader(name, local_files_only):
        calls.append(local_files_only)
        if local_files_only:
            raise OSError("not in the cache")
        return f"config of {name}"

    assert hub.from_hub(loader, "org/model") == "config of org/model" and calls == [True, False]
    calls.clear()
    with pytest.raises(PlannerError, match="must be in the local Hugging Face cache"):
        hub.from_hub(loader, "org/model", network=False)
    assert calls == [True]
