"""Sparsity masks: which weights of a pruned model survive (the one place that defines sparsity).

A *prunable* weight is the ``weight`` of an ``nn.Linear`` inside the decoder blocks (for Llama:
q, k, v, o, gate, up, down). Embeddings, ``lm_head``, norms and biases stay dense.

`SparsityMasks` keeps one bit per prunable weight (1 = surviving), packed eight to a byte, so a
mask costs 0.125 bytes per parameter in memory and on disk.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping

import torch
from torch import nn

logger = logging.getLogger(__name__)

MASKS_FILE = "sparsity_masks.safetensors"
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_BIT_WEIGHTS_ON: dict[torch.device, torch.Tensor] = {}


def _bit_weights(device: torch.device) -> torch.Tensor:
    """The bit values on `device`, copied there once (not a host-to-device copy per unpack)."""
    if device not in _BIT_WEIGHTS_ON:
        _BIT_WEIGHTS_ON[device] = _BIT_WEIGHTS.to(device)
    return _BIT_WEIGHTS_ON[device]


# --------------------------------------------------------------------------- bit packing
def pack_bool(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into a flat uint8 tensor, eight entries per byte (little-endian bits)."""
    flat = mask.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) * _bit_weights(flat.device)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bool(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Inverse of `pack_bool`: a bool tensor of `shape` on `packed`'s device."""
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    bits = packed.unsqueeze(1).bitwise_and(_bit_weights(packed.device)).ne(0)
    return bits.reshape(-1)[:numel].reshape(shape)


# --------------------------------------------------------------------------- model structure
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (the ``nn.ModuleList`` with ``num_hidden_layers`` entries)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for module_list in candidates:
        if n is None or len(module_list) == n:
            return module_list
    raise ValueError(
        f"Could not find the decoder blocks of {type(model).__name__}: expected an nn.ModuleList with "
        f"config.num_hidden_layers={n} entries. Only decoder-only causal LMs are supported."
    )


def prunable_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Map module name -> ``nn.Linear`` for every linear layer inside the decoder blocks."""
    _reject_peft(model)
    try:
        layers = decoder_layers(model)
    except ValueError:
        return {}
    layer_ids = {id(m) for m in layers.modules()}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in layer_ids}


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Map parameter name (``...q_proj.weight``) -> weight, for every prunable matrix, in model order."""
    return {f"{name}.weight": m.weight for name, m in prunable_modules(model).items()}


def _reject_peft(model: nn.Module) -> None:
    if hasattr(model, "peft_config") or any("lora_" in name for name, _ in model.named_modules()):
        raise TypeError(
            "The model is wrapped with PEFT/LoRA adapters. SAU unlearns the sparse base weights directly; "
            "merging adapters would make the pruned weights dense. Pass the base model "
            "(e.g. `model = peft_model.unload()` without merging, or the model you loaded before get_peft_model)."
        )


# --------------------------------------------------------------------------- masks
class SparsityMasks:
    """Bit-packed surviving-weight masks, one per prunable matrix, keyed by parameter name."""

    def __init__(self, packed: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], source: str = ""):
        if set(packed) != set(shapes):
            raise ValueError("`packed` and `shapes` must have the same keys")
        self._packed = dict(packed)
        self._shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.source = source

    # ---- construction
    @classmethod
    def from_tensors(cls, masks: Mapping[str, torch.Tensor], source: str = "tensors") -> SparsityMasks:
        """From a dict of parameter name -> bool tensor (True = surviving), e.g. a pruner's output."""
        return cls(
            {k: pack_bool(v.detach()) for k, v in masks.items()}, {k: tuple(v.shape) for k, v in masks.items()}, source
        )

    @classmethod
    def from_model(cls, model: nn.Module) -> SparsityMasks:
        """Infer the masks from the model's exact zeros (``weight != 0``)."""
        params = prunable_parameters(model)
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no prunable matrices (nn.Linear layers inside decoder blocks); "
                "SAU needs a decoder-only transformer such as Llama, Mistral or Qwen."
            )
        masks = cls.from_tensors({k: p.detach() != 0 for k, p in params.items()}, source="inferred from zeros")
        logger.info(
            "Sparsity masks inferred from the model's zeros (exact zeros count as pruned): %.2f%% sparse over %d matrices",
            100 * masks.sparsity(),
            len(masks),
        )
        return masks

    @classmethod
    def dense(cls, model: nn.Module) -> SparsityMasks:
        """All-ones masks for a dense model."""
        return cls.from_tensors({k: torch.ones_like(p, dtype=torch.bool) for k, p in prunable_parameters(model).items()})

    # ---- access
    def __len__(self) -> int:
        return len(self._packed)

    def __contains__(self, name: str) -> bool:
        return name in self._packed

    @property
    def names(self) -> list[str]:
        return list(self._packed)

    def get(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The bool mask of one matrix (True = surviving)."""
        packed = self._packed[name]
        if device is not None:
            packed = packed.to(device)
        return unpack_bool(packed, self._shapes[name])

    def to(self, device: torch.device | str) -> SparsityMasks:
        """Move the packed masks (in place) to `device`; returns self."""
        self._packed = {k: v.to(device) for k, v in self._packed.items()}
        return self

    def num_surviving(self, name: str) -> int:
        return int(self.get(name).sum())

    def numel(self, name: str) -> int:
        n = 1
        for s in self._shapes[name]:
            n *= s
        return n

    def per_matrix_sparsity(self) -> dict[str, float]:
        return {k: 1.0 - self.num_surviving(k) / self.numel(k) for k in self._packed}

    def sparsity(self) -> float:
        """Fraction of pruned entries over all prunable matrices."""
        total = sum(self.numel(k) for k in self._packed)
        alive = sum(self.num_surviving(k) for k in self._packed)
        return 1.0 - alive / max(total, 1)

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self._packed.values())

    # ---- model interaction
    def check(self, model: nn.Module) -> None:
        """Raise a clear error when the masks do not fit `model` (names or shapes)."""
        params = prunable_parameters(model)
        missing = [k for k in self._packed if k not in params]
        if missing:
            raise ValueError(
                f"The sparsity masks name {len(missing)} matrices the model does not have (first: {missing[0]!r}). "
                "Were they saved for another model?"
            )
        uncovered = [k for k in params if k not in self._packed]
        if uncovered:
            raise ValueError(
                f"The sparsity masks cover {len(self._packed)} of the model's {len(params)} prunable matrices; "
                f"{len(uncovered)} have no mask (first: {uncovered[0]!r}). Save the masks of the whole model "
                "(SparsityMasks.from_model) or let them be inferred (sparsity_masks=None)."
            )
        for name, shape in self._shapes.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(
                    f"Sparsity mask for {name!r} has shape {shape} but the model's weight has shape "
                    f"{tuple(params[name].shape)}. The masks were saved for a different model."
                )

    @torch.no_grad()
    def apply_(self, model: nn.Module, params: Mapping[str, torch.Tensor] | None = None) -> None:
        """Set every pruned entry of `model` to exactly +0.0 (``mul_`` would leave -0.0 and NaN).

        `params` (name -> weight) skips the model walk; the trainer passes it on every optimizer step.
        """
        params = prunable_parameters(model) if params is None else params
        for name in self._packed:
            p = params[name]
            p.masked_fill_(~self.get(name, p.device), 0.0)

    @torch.no_grad()
    def count_nonzero_pruned(self, model: nn.Module) -> int:
        """How many pruned entries of `model` are not exactly zero."""
        params = prunable_parameters(model)
        return sum(int(params[n][~self.get(n, params[n].device)].count_nonzero()) for n in self._packed)

    # ---- files
    def save(self, path: str | os.PathLike) -> str:
        """Save to a safetensors file (a directory gets ``sparsity_masks.safetensors``); returns the file path."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MASKS_FILE)
        meta = {"format": "sau-trainer/sparsity-masks", "version": "1", "source": self.source,
                "shapes": json.dumps(self._shapes)}
        save_file({k: v.detach().cpu().contiguous() for k, v in self._packed.items()}, path, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> SparsityMasks:
        """Load masks saved by `save` (a file or a directory holding one); validate against `model` if given."""
        from safetensors import safe_open

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MASKS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No sparsity mask file at {path}")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "sau-trainer/sparsity-masks":
                raise ValueError(f"{path} is not a sau-trainer sparsity mask file")
            shapes = {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()}
            packed = {k: f.get_tensor(k) for k in f.keys()}
        masks = cls(packed, shapes, source=meta.get("source", path))
        if model is not None:
            masks.check(model)
        return masks

    def __repr__(self) -> str:
        return f"SparsityMasks({len(self)} matrices, sparsity={self.sparsity():.4f}, source={self.source!r})"
