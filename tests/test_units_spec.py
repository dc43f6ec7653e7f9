import json

import pytest

from planner.errors import PlannerError
from planner.spec import build_model, find_decoder_layers, list_presets, load_spec
from planner.units import GiB, parse_bytes


@pytest.mark.parametrize("text,expected", [
    ("24GB", 24 * 1000**3), ("24GiB", 24 * GiB), ("24G", 24 * GiB), ("24000MiB", 24000 * 1024**2),
    ("1.5 gib", int(1.5 * GiB)), ("512", 512),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["0", "-3GB", "abc", "24XB", "", "0GiB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(PlannerError, match="--vram"):
        parse_bytes(text)


def test_presets_resolve_by_name_and_hub_id():
    presets = list_presets()
    for name in ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b",
                 "qwen2.5-0.5b", "qwen2.5-7b", "gemma-2b", "gemma-7b", "phi-3-mini", "gpt2"]:
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
