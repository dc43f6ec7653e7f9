"""The CUDA replay lays out each frozen decoder layer as a lever stores it (bitsandbytes' quantized weights).

Truth computed apart from the traces: bitsandbytes' storage rules applied to the model's linear shapes, each
tensor one block of the caching allocator (a multiple of 512 B). Two frozen layers added below the trained one
(4 -> 6 layers) must add exactly their blocks to ``max_memory_allocated``."""

import pytest
from torch import nn

from planner.config import TrainConfig
from planner.cost import estimate
from planner.spec import build_model, find_decoder_layers

RANK = 8
NF4_BLOCK, NESTED_BLOCK = 64, 256  # weights per absmax; absmax per nested absmax (bitsandbytes quantize_4bit)
NF4_CODES, DYNAMIC_MAP = 16, 256  # float32 entries of the NF4 code book and of the dynamic map, one copy per weight


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("PLANNER_COST_CACHE", "0")


def block(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


def _linear_blocks(out_f: int, in_f: int, has_bias: bool, kind: str | None) -> int:
    """Blocks of one frozen linear as bitsandbytes stores it (functional.quantize_4bit, int8_vectorwise_quant)."""
    n = out_f * in_f
    if kind is None:  # the model's bfloat16
        return block(2 * n) + (block(2 * out_f) if has_bias else 0)
    if kind == "int8":  # int8 codes, a float32 scale per row; the bias stays float32 (peft's cast, float32 inputs)
        return block(n) + block(4 * out_f) + (block(4 * out_f) if has_bias else 0)
    blocks = -(-n // NF4_BLOCK)
    out = block(-(-n // 2)) + block(4 * NF4_CODES)  # two 4-bit codes per byte, the NF4 code book
    if kind == "nf4":
        out += block(4 * blocks)  # float32 absmax
    else:  # uint8 absmax, their float32 absmax per 256, the mean offset, the dynamic map
        out += block(blocks) + block(4 * -(-blocks // NESTED_BLOCK)) + block(4) + block(4 * DYNAMIC_MAP)
    # the first 4-bit forward casts the bias back to the compute dtype
    return out + (block(2 * out_f) if has_bias else 0)


def frozen_layer_blocks(spec, kind: str | None, lora: bool) -> int:
    from transformers.pytorch_utils import Conv1D

    layer = find_decoder_layers(build_model(spec, dtype="bfloat16"))[1][0]
    total, in_linears = 0, set()
    for name, m in layer.named_modules():
        if isinstance(m, (nn.Linear, Conv1D)):
            out_f, in_f = m.weight.shape[::-1] if isinstance(m, Conv1D) else m.weight.shape
            total += _linear_blocks(out_f, in_f, m.bias is not None, kind)
            total += block(4 * RANK * in_f) + block(4 * out_f * RANK) if lora else 0  # float32 adapters A, B
            in_linears |= {id(p) for p in m.parameters()}
    # norms: bfloat16, or float32 after peft's prepare_model_for_kbit_training
    total += sum(block(p.numel() * (2 if kind is None else 4)) for p in layer.parameters() if id(p) not in in_linears)
    buffers = sum(b.numel() * b.element_size() for b in layer.buffers())
    return total + (block(buffers) if buffers else 0)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("kind", [None, "nf4", "nf4-dq", "int8"])
@pytest.mark.parametrize("method", ["static", "qlora"])
def test_cuda_allocated_bytes_hold_frozen_layers_as_stored(tiny, arch, kind, method):
    allocated = {}
    for depth in (4, 6):
        spec = tiny(arch, num_layers=depth, hidden=128, vocab=512)
        cfg = TrainConfig(
            batch_size=2,
            seq_len=64,
            dtype="bfloat16",
            quantize=kind,
            layers=[depth - 1],
            train_embeddings=False,
            train_head=False,
            lora_rank=RANK if method == "qlora" else None,
        )
        allocated[depth] = estimate(spec, cfg, device="cuda").allocated_bytes
    assert allocated[6] - allocated[4] == 2 * frozen_layer_blocks(spec, kind, method == "qlora")
