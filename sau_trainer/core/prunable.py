"""Which weights of a model are prunable, and how each reads as a stack of matrices (its selection units).

A *prunable* weight (SPEC section 2) is the ``weight`` of an ``nn.Linear`` inside the language model's
decoder blocks (for Llama: q, k, v, o, gate, up, down), or a fused mixture-of-experts tensor there
(``[experts, out, in]``; each expert's matrix is its own selection unit, see `Layout`). Embeddings,
``lm_head``, norms, routers and biases stay dense. The model is only read (its structure and its weights'
dtypes), never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layout:
    """How a prunable tensor reads as a stack of ``[units, out, in]`` matrices (its selection units).

    A ``nn.Linear`` weight ``[out, in]`` is one unit. A fused mixture-of-experts tensor (transformers 5.x
    Qwen3-MoE, Mixtral, OLMoE: ``[experts, out, in]``; GPT-OSS: ``[experts, in, out]``, ``transposed``)
    holds one unit per expert. "Row" always means an output row, whatever the storage order.
    """

    experts: bool = False
    transposed: bool = False

    def units(self, t: torch.Tensor) -> torch.Tensor:
        """A ``[units, out, in]`` view of `t` (a 1-D tensor, e.g. a dense norm weight, is one row)."""
        if t.dim() < 2:
            return t.reshape(1, 1, -1)
        if not self.experts:
            t = t.unsqueeze(0)
        return t.transpose(-1, -2) if self.transposed else t

    def restore(self, u: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
        """Inverse of `units` for a full ``[units, out, in]`` tensor: a contiguous tensor of `shape`."""
        shape = tuple(shape)
        if len(shape) < 2:
            return u.reshape(shape)
        t = u.transpose(-1, -2) if self.transposed else u
        return t.reshape(shape).contiguous()

    def restore_broadcast(self, u: torch.Tensor, ndim: int) -> torch.Tensor:
        """Inverse of `units` for a ``[units, out or 1, 1]`` tensor (a per-unit or per-row factor): the shape
        that broadcasts against the stored tensor (0-d for one unit of a matrix, ``[out, 1]`` per row, ...)."""
        if ndim < 2 or (not self.experts and u.shape[1] == 1):
            return u.reshape(())
        t = u.transpose(-1, -2) if self.transposed else u
        return t if self.experts else t.squeeze(0)


PLAIN = Layout()

# Fused expert classes that predate transformers' `is_transposed` attribute (4.57), by storage order.
_KNOWN_EXPERT_LAYOUTS = {"GptOssExperts": True}


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable parameter: the module that owns it, its attribute name there, and its `Layout`."""

    module: nn.Module
    attr: str
    layout: Layout = PLAIN
    expert: bool = False  # the weight of one expert (a fused tensor, or a per-expert nn.Linear in 4.57)

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.attr)


def language_model(model: nn.Module) -> nn.Module:
    """The language model's decoder, found through the model's own API (``get_decoder()``).

    For a composite model such as ``Gemma3ForConditionalGeneration`` this is ``model.language_model``,
    so a vision tower's blocks are never taken for the decoder's.
    """
    get = getattr(model, "get_decoder", None)
    try:
        decoder = get() if callable(get) else None
    except (AttributeError, NotImplementedError, TypeError):
        decoder = None
    return decoder if isinstance(decoder, nn.Module) else model


def _num_text_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "num_hidden_layers", None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder blocks: ``get_decoder().layers`` (or its ``nn.ModuleList`` with as many
    entries as the text config's ``num_hidden_layers``)."""
    n = _num_text_layers(model)
    decoder = language_model(model)
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0 and (n is None or len(layers) == n):
        return layers
    for module in decoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n):
            return module
    raise ValueError(
        f"Could not find the decoder blocks of {type(model).__name__}: expected an nn.ModuleList with "
        f"num_hidden_layers={n} entries in its language model ({type(decoder).__name__}). "
        "Only decoder-only causal LMs (or composite models whose get_decoder() is one) are supported."
    )


def _expert_layout(experts: nn.Module, name: str) -> Layout:
    transposed = getattr(experts, "is_transposed", None)
    if transposed is None:
        transposed = _KNOWN_EXPERT_LAYOUTS.get(type(experts).__name__)
    if transposed is None:
        raise ValueError(
            f"{name} is a fused {tuple(getattr(experts, name.rsplit('.', 1)[-1]).shape)} expert tensor of "
            f"{type(experts).__name__}, whose storage order ([experts, out, in] or [experts, in, out]) is not known. "
            "Supported: transformers' fused experts that declare `is_transposed` (5.x) and GPT-OSS; use a "
            "transformers release that declares it, or keep the model dense."
        )
    return Layout(experts=True, transposed=bool(transposed))


def prunable_weights(model: nn.Module) -> dict[str, PrunableWeight]:
    """Every prunable weight of the language model's decoder blocks, by parameter name, in model order.

    Prunable: the weight of every ``nn.Linear`` in the blocks, and every fused 3-D expert tensor (each
    expert's matrix its own unit). Dense: embeddings, ``lm_head``, norms, biases, and routers, found by role:
    transformers 5.x routers are modules of their own (not ``nn.Linear``); the ``nn.Linear`` gates of 4.57
    (and shared-expert gates) are direct children of the block that also holds the ``experts``. Other tensors of 3 or more dimensions
    in the blocks are an error, never silently left dense.
    """
    _reject_peft(model)
    try:
        layers = decoder_layers(model)
    except ValueError:
        return {}
    in_blocks = {id(m) for m in layers.modules()}
    routers, in_experts = set(), set()
    for module in layers.modules():
        experts = getattr(module, "experts", None)
        if isinstance(experts, nn.Module):
            in_experts.update(id(m) for m in experts.modules())
            routers.update(id(c) for c in module.children() if c is not experts and isinstance(c, nn.Linear))
    out: dict[str, PrunableWeight] = {}
    for mod_name, module in model.named_modules():
        if id(module) not in in_blocks or id(module) in routers:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, nn.Linear):
            out[f"{prefix}weight"] = PrunableWeight(module, "weight", PLAIN, expert=id(module) in in_experts)
            continue
        for attr, p in module.named_parameters(recurse=False):
            if p.dim() < 3:
                continue
            name = f"{prefix}{attr}"
            if id(module) not in in_experts:
                raise ValueError(
                    f"{name} is a {p.dim()}-D parameter of {type(module).__name__} inside the decoder blocks that is "
                    "neither an nn.Linear weight nor a fused mixture-of-experts tensor; sau-trainer cannot tell its "
                    "rows from its columns. Supported: nn.Linear layers and transformers' fused experts."
                )
            out[name] = PrunableWeight(module, attr, _expert_layout(module, name), expert=True)
    return out


def prunable_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Map module name -> ``nn.Linear`` for every prunable linear layer (fused experts are not modules of
    their own: see `prunable_weights`)."""
    return {n.rsplit(".", 1)[0]: w.module for n, w in prunable_weights(model).items() if w.attr == "weight"
            and isinstance(w.module, nn.Linear)}


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Map parameter name (``...q_proj.weight``, ``...experts.gate_up_proj``) -> tensor, for every prunable
    weight, in model order."""
    return {name: w.param for name, w in prunable_weights(model).items()}


def layouts(model: nn.Module) -> dict[str, Layout]:
    """The `Layout` of every prunable parameter (fused experts are read per expert)."""
    return {name: w.layout for name, w in prunable_weights(model).items()}


def check_trainable_weights(params: Mapping[str, torch.Tensor]) -> None:
    """Refuse tensors that can be neither pruned nor masked: on the meta device, or not floating point
    (quantized storage such as bitsandbytes int8/4-bit)."""
    for name, p in params.items():
        if p.is_meta:
            raise ValueError(
                f"{name} is on the meta device (not loaded): load the model's weights (e.g. from_pretrained "
                "without device_map offloading to 'meta') before pruning or unlearning."
            )
        if not p.is_floating_point():
            raise ValueError(
                f"{name} is stored as {p.dtype} (a quantized weight?): sau-trainer prunes and unlearns floating-point "
                "weights (fp32, bf16, fp16). Load the model unquantized; quantize after unlearning."
            )


def _reject_peft(model: nn.Module) -> None:
    if hasattr(model, "peft_config") or any("lora_" in name for name, _ in model.named_modules()):
        raise TypeError(
            "The model is wrapped with PEFT/LoRA adapters. SAU unlearns the sparse base weights directly; "
            "merging adapters would make the pruned weights dense. Pass the base model "
            "(e.g. `model = peft_model.unload()` without merging, or the model you loaded before get_peft_model)."
        )
