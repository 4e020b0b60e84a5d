"""The memory estimate's model shape: parameter counts of a Llama-type model from its config, read offline
(a local directory, the Hugging Face cache, or `KNOWN_MODELS`), without loading any weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Hub ids whose shape is known without the Hub (the recipes' models): a name of MODEL_SHAPES or config fields.
KNOWN_MODELS: dict[str, str | dict] = {
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.3-70B-Instruct": "llama-3.3-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.3-70b",
    "meta-llama/Llama-2-7b-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "meta-llama/Llama-2-7b-chat-hf": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "HuggingFaceH4/zephyr-7b-beta": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
}


@dataclass(frozen=True)
class ModelCounts:
    """What the estimate needs to know about a model: parameter counts and the sizes activations scale with."""

    total: int  # every parameter
    prunable: int  # the prunable weights (nn.Linear weights of the decoder blocks)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads x head dim
    vocab: int
    largest_layer: int  # parameters of the largest decoder block (an FSDP unit)
    outside_layers: int  # embeddings, final norm, untied head (the root unit)
    max_in_features: int  # widest prunable matrix input (SparseGPT's Hessian is its square)
    largest_matrix: int  # entries of the largest prunable matrix
    source: str = ""


def llama_counts(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
                 tied: bool = False, head_dim: int | None = None, source: str = "") -> ModelCounts:
    """Parameter counts of a Llama-style model by arithmetic (q, k, v, o, gate, up, down, two norms per block)."""
    hd = head_dim or hidden // heads
    q, kv = heads * hd, kv_heads * hd
    linear = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * intermediate
    block = linear + 2 * hidden
    outside = vocab * hidden * (1 if tied else 2) + hidden
    return ModelCounts(total=layers * block + outside, prunable=layers * linear, layers=layers, hidden=hidden,
                       intermediate=intermediate, kv_dim=kv, vocab=vocab, largest_layer=block,
                       outside_layers=outside, max_in_features=max(hidden, intermediate, q),
                       largest_matrix=hidden * intermediate, source=source)


def counts_from_config(config: Any, source: str = "") -> ModelCounts:
    """Counts of any causal LM config, from the model built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..masks import decoder_layers, prunable_parameters

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    prunable = prunable_parameters(model)
    blocks = list(decoder_layers(model))
    per_block = [sum(p.numel() for p in b.parameters()) for b in blocks]
    total = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    hd = getattr(text, "head_dim", None) or hidden // heads
    kv = (getattr(text, "num_key_value_heads", None) or heads) * hd
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    return ModelCounts(total=total, prunable=sum(p.numel() for p in prunable.values()), layers=len(blocks),
                       hidden=hidden, intermediate=inter, kv_dim=kv, vocab=text.vocab_size,
                       largest_layer=max(per_block, default=0), outside_layers=total - sum(per_block),
                       max_in_features=max((p.shape[-1] for p in prunable.values()), default=0),
                       largest_matrix=max((p.shape[-1] * p.shape[-2] for p in prunable.values()), default=0),
                       source=source)


def model_config(model_section) -> tuple[Any, str] | None:
    """The recipe model's config without its weights: a `shape`, a local directory's config.json, the Hugging
    Face cache, or `KNOWN_MODELS`; None when none of them knows it (offline and unknown)."""
    from transformers import AutoConfig, LlamaConfig

    from ..modeling import MODEL_SHAPES

    def from_fields(fields, where):
        fields = dict(MODEL_SHAPES[fields]) if isinstance(fields, str) else dict(fields)
        return LlamaConfig(**fields), where

    m = model_section
    if m.shape is not None:
        fields = dict(MODEL_SHAPES[m.shape]) if isinstance(m.shape, str) else dict(m.shape)
        fields["vocab_size"] = m.vocab_size  # the tokenizer trained from scratch sets it (build_llama)
        return LlamaConfig(**fields), f"shape {m.shape!r}"
    ref = m.name_or_path
    if ref and os.path.isfile(os.path.join(ref, "config.json")):
        return AutoConfig.from_pretrained(ref), f"{ref}/config.json"
    if ref:
        try:
            return AutoConfig.from_pretrained(ref, local_files_only=True), f"{ref} (Hugging Face cache)"
        except Exception:  # noqa: BLE001 - not cached: the table below, else unknown
            pass
        if ref in KNOWN_MODELS:
            known = KNOWN_MODELS[ref]
            return from_fields(known, f"{ref} (shape {known!r})" if isinstance(known, str) else f"{ref} (known shape)")
    return None
