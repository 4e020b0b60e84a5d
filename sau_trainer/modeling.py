"""Small Llama models built from a config (no download), for tests, the demo and speed benchmarks."""

from __future__ import annotations

from typing import Any

import torch

# Named shapes; the demo and tests use "tiny", benchmarks use the real model shapes with random weights.
MODEL_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, max_position_embeddings=512),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, vocab_size=128256,
                         rope_theta=500000.0, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=131072, vocab_size=128256,
                         rope_theta=500000.0),
    "llama-3.3-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, max_position_embeddings=131072, vocab_size=128256,
                          rope_theta=500000.0),
}


def build_llama(shape: str | dict = "tiny", tokenizer: Any = None, seed: int = 0, **overrides):
    """A randomly initialised `LlamaForCausalLM` of a named shape (or a dict of config fields).

    With a tokenizer, the vocabulary size and the special token ids come from it.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if isinstance(shape, str):
        if shape not in MODEL_SHAPES:
            raise ValueError(f"Unknown model shape {shape!r}; choose one of {sorted(MODEL_SHAPES)} or pass a dict.")
        fields = dict(MODEL_SHAPES[shape])
    else:
        fields = dict(shape)
    if tokenizer is not None:
        fields.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    fields.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**fields))
