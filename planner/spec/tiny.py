"""Tiny configs of real architectures (random weights) for tests and CPU benchmarks."""

from __future__ import annotations

from planner.spec.model import ModelSpec, _config_from_dict

TINY_ARCHS = ("llama", "qwen2", "gpt2", "mistral", "gemma", "phi3")


def tiny_spec(
    model_type: str = "llama",
    *,
    num_layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    intermediate: int | None = None,
) -> ModelSpec:
    """A small model of ``model_type``: GQA for llama/mistral/qwen2, tied embeddings for qwen2/gemma/gpt2."""
    inter = intermediate or 2 * hidden + hidden // 2
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    if model_type == "gpt2":
        cfg = dict(
            model_type="gpt2",
            n_embd=hidden,
            n_layer=num_layers,
            n_head=heads,
            n_positions=1024,
            tie_word_embeddings=True,
            **common,
        )
    else:
        cfg = dict(
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=1024,
            **common,
        )
        if model_type == "qwen2":
            cfg.update(tie_word_embeddings=True, use_sliding_window=False)
        elif model_type == "gemma":
            cfg.update(tie_word_embeddings=True, head_dim=hidden // heads)
        elif model_type == "mistral":
            cfg.update(sliding_window=64, tie_word_embeddings=False)
        elif model_type == "phi3":
            cfg.update(
                num_key_value_heads=heads,
                sliding_window=1023,
                original_max_position_embeddings=1024,
                tie_word_embeddings=False,
            )
        else:
            cfg.update(tie_word_embeddings=False)
    return ModelSpec(f"tiny-{model_type}", _config_from_dict(cfg))
