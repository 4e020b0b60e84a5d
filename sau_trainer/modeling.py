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


class CheckpointError(ValueError):
    """A checkpoint that is not loaded (a pickle file torch's safe loader refuses); its message is one line."""

    clean = True  # the pipeline reports it in one line, without a traceback


def load_causal_lm(source: str, **kwargs):
    """`AutoModelForCausalLM.from_pretrained(source, **kwargs)`, with a clear error for a pickle checkpoint.

    Only safetensors checkpoints are loaded as they are. A pickle checkpoint (``pytorch_model.bin``) goes through
    torch's ``weights_only`` loader (transformers' default), which refuses anything but tensors: such a file is
    refused with `CheckpointError` naming it, never loaded with ``weights_only=False`` (that would run its code)."""
    import pickle

    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (pickle.UnpicklingError, OSError) as caught:
        err = _unpickling_error(caught)  # transformers < 5 wraps it in an OSError
        if err is None:
            raise
        first = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                     str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise CheckpointError(
            f"{source}: its pickle checkpoint (*.bin) was refused by torch's safe loader ({first}); sau-trainer "
            "loads only safetensors checkpoints and plain-tensor pickles, and never runs code from a checkpoint. "
            "Convert the model to safetensors where you trust it (from_pretrained, then save_pretrained) and "
            "point to that copy.") from None


def _unpickling_error(err: BaseException):
    """The `pickle.UnpicklingError` that `err` is or was raised from (its cause or context chain), else None."""
    import pickle

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, pickle.UnpicklingError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")


def strip_remote_code(model_dir: str) -> list[str]:
    """Drop ``auto_map`` and ``trust_remote_code`` from a saved model's ``config.json`` (returns those dropped).

    The package loads models only with transformers' own classes and never runs remote code, so a model it saves
    does not point loaders at a source repository's code (kept from its source, they would invite
    ``trust_remote_code=True`` on a model that needs none)."""
    import json
    import os

    path = os.path.join(model_dir, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return []
    dropped = [k for k in REMOTE_CODE_KEYS if k in config]
    if dropped:
        for k in dropped:
            del config[k]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    return dropped
