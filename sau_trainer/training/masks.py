"""Sparsity masks: which weights of a pruned model survive (the one place that defines sparsity), and their file.

`SparsityMasks` keeps one bit per prunable weight (1 = surviving), packed eight to a byte, so a
mask costs 0.125 bytes per parameter in memory and on disk. Files pack eight neighbours to a byte
(`sau_trainer.core.bits.pack_bool`); memory holds bit planes (`sau_trainer.core.bits`), which the fused passes
(`sau_trainer.core.fused`) apply at the memory floor. Which weights are prunable: `sau_trainer.core.prunable`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..core.bits import from_planes, pack_planes, to_planes, unpack_planes
from ..core.fused import where_many_
from ..core.prunable import check_trainable_weights, prunable_parameters

logger = logging.getLogger("sau_trainer.masks")  # its name before the move: users and tests set its level

MASKS_FILE = "sparsity_masks.safetensors"
# `SparsityMasks.check_weights`: how many entries may disagree with the weights' zeros (of each kind), at least
# HANDFUL and at most this fraction of the entries beyond it (a surviving weight that is exactly zero by chance).
HANDFUL = 16
HANDFUL_FRACTION = 1e-6


class LazyMasks(Mapping):
    """name -> bool mask, computed by ``fn(name)`` on each lookup: unpacking or computing every mask at once
    would cost 1 byte per weight (7 GB at 8B)."""

    def __init__(self, names: Iterable[str], fn):
        self._names, self._fn = dict.fromkeys(names), fn  # an ordered set

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._fn(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _NonzeroMasks(LazyMasks):
    """``weight != 0`` per parameter, computed on lookup."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        super().__init__(params, lambda name: params[name].detach() != 0)


class SparsityMasks:
    """Bit-packed surviving-weight masks, one per prunable matrix, keyed by parameter name."""

    def __init__(self, packed: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], source: str = "",
                 planes: bool = False):
        """`packed`: name -> bits packed as `pack_bool` packs them (the file format), or as bit planes
        (`sau_trainer.core.bits.pack_planes`) with ``planes=True``. In memory the masks are kept as bit planes, which
        the fused passes apply at the memory floor; `save` writes the file format back."""
        if set(packed) != set(shapes):
            raise ValueError("`packed` and `shapes` must have the same keys")
        self._shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self._packed = dict(packed) if planes else {k: to_planes(v, self._shapes[k]) for k, v in packed.items()}
        self.source = source

    # ---- construction
    @classmethod
    def from_tensors(cls, masks: Mapping[str, torch.Tensor], source: str = "tensors") -> SparsityMasks:
        """From a mapping of parameter name -> bool tensor (True = surviving), e.g. a pruner's output.

        The mapping may be lazy (computing each mask on lookup): one matrix is unpacked at a time.
        """
        packed, shapes = {}, {}
        for k in masks:
            m = masks[k]
            packed[k], shapes[k] = pack_planes(m.detach()), tuple(m.shape)
            del m  # before the next lookup: one unpacked matrix at a time
        return cls(packed, shapes, source, planes=True)

    @classmethod
    def from_model(cls, model: nn.Module) -> SparsityMasks:
        """Infer the masks from the model's exact zeros (``weight != 0``)."""
        params = prunable_parameters(model)
        if not params:
            raise ValueError(
                f"{type(model).__name__} has no prunable matrices (nn.Linear layers or fused experts inside the "
                "language model's decoder blocks); SAU needs a decoder-only transformer such as Llama, Mistral or Qwen."
            )
        check_trainable_weights(params)
        masks = cls.from_tensors(_NonzeroMasks(params), source="inferred from zeros")
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
        return unpack_planes(self.planes(name, device), self._shapes[name])

    def planes(self, name: str, device: torch.device | str | None = None) -> torch.Tensor:
        """The bit planes of one matrix (`sau_trainer.core.bits`), what the fused passes read."""
        packed = self._packed[name]
        return packed if device is None else packed.to(device)

    def replace(self, name: str, mask: torch.Tensor) -> None:
        """Set the mask of one matrix (same shape; the moving mask, `sau_trainer.training.moving_mask`, stores its
        projections here), kept on the device the old one was on."""
        if tuple(mask.shape) != self._shapes[name]:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, expected {self._shapes[name]}")
        self._packed[name] = pack_planes(mask).to(self._packed[name].device)

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

    def per_expert_sparsity(self) -> dict[str, list[float]]:
        """For each fused expert tensor (3-D, experts first in every layout): the sparsity of each expert."""
        out = {}
        for k, shape in self._shapes.items():
            if len(shape) == 3:
                alive = self.get(k).reshape(shape[0], -1).sum(1)
                out[k] = [1.0 - int(a) / (shape[1] * shape[2]) for a in alive]
        return out

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
        where_many_((params[name].data, self.planes(name, params[name].device), None) for name in self._packed)

    @torch.no_grad()
    def count_nonzero_pruned(self, model: nn.Module) -> int:
        """How many pruned entries of `model` are not exactly zero."""
        params = prunable_parameters(model)
        return sum(int(params[n][~self.get(n, params[n].device)].count_nonzero()) for n in self._packed)

    @torch.no_grad()
    def mismatch(self, weights: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
        """``(pruned but not zero, surviving but exactly zero, entries compared)`` of these masks against `weights`
        (name -> tensor, e.g. a saved model's tensors): how far the masks disagree with the weights' zeros."""
        pruned_nonzero = surviving_zero = total = 0
        for name in self._packed:
            w = weights[name]
            keep = self.get(name, w.device)
            zero = w == 0
            pruned_nonzero += int((~keep & ~zero).sum())
            surviving_zero += int((keep & zero).sum())
            total += w.numel()
        return pruned_nonzero, surviving_zero, total

    def check_weights(self, weights: Mapping[str, torch.Tensor], source: str = "") -> None:
        """Raise when the masks disagree with the zeros of `weights` beyond a handful of entries (`HANDFUL`).

        A pruned model is saved with its pruned entries exactly zero, and a surviving weight is exactly zero only
        by rare chance, so a mask file that was saved with its weights agrees with them: a mask file from a cache
        that does not is corrupt (or belongs to other weights), and training with it would prune other entries."""
        pruned_nonzero, surviving_zero, total = self.mismatch(weights)
        allowed = max(HANDFUL, int(total * HANDFUL_FRACTION))
        if pruned_nonzero > allowed or surviving_zero > allowed:
            raise ValueError(
                f"{source or self.source}: the sparsity masks disagree with the weights' zeros ({pruned_nonzero} "
                f"pruned entries are not zero, {surviving_zero} surviving entries are exactly zero, of {total}; at "
                f"most {allowed} of each is allowed): the mask file is corrupt or belongs to other weights. Prune "
                "the model again (a recipe recomputes its stage when the file is deleted)."
            )

    # ---- files
    def save(self, path: str | os.PathLike) -> str:
        """Save to a safetensors file (a directory gets ``sparsity_masks.safetensors``); returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MASKS_FILE)
        meta = {"format": "sau-trainer/sparsity-masks", "version": "1", "source": self.source,
                "shapes": json.dumps(self._shapes)}
        packed = {k: from_planes(v.detach().cpu(), self._shapes[k]).contiguous() for k, v in self._packed.items()}
        save_file(packed, path, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> SparsityMasks:
        """Load masks saved by `save` (a file or a directory holding one); validate against `model` if given."""
        safetensors_error = getattr(safetensors, "SafetensorError", OSError)
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MASKS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No sparsity mask file at {path}")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                packed = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, RuntimeError, safetensors_error) as err:  # safetensors' errors do not name the file
            raise ValueError(f"{path}: cannot read the sparsity mask file ({type(err).__name__}: {err}); it is "
                             "truncated or corrupt. Save the masks again (a recipe recomputes its stage when the "
                             "file is deleted).") from err
        if meta.get("format") != "sau-trainer/sparsity-masks":
            raise ValueError(f"{path} is not a sau-trainer sparsity mask file")
        shapes = {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()}
        if model is not None:  # model order (safetensors sorts keys: layers.1, layers.10, layers.2)
            order = [k for k in prunable_parameters(model) if k in packed]
            packed = {k: packed[k] for k in order + [k for k in packed if k not in set(order)]}
        masks = cls(packed, shapes, source=meta.get("source", path))
        if model is not None:
            masks.check(model)
        return masks

    def __repr__(self) -> str:
        return f"SparsityMasks({len(self)} matrices, sparsity={self.sparsity():.4f}, source={self.source!r})"


def check_resume_masks(given: SparsityMasks, saved: SparsityMasks, checkpoint: str, moving: bool = False) -> None:
    """Resuming from `checkpoint`: the masks a trainer was given (or inferred) against the ones the checkpoint
    saved. Equal: nothing to say. Different with a moving mask (``sau_moving_mask``): expected, the checkpoint's
    moved masks are used, and said. Different otherwise: refused (ValueError), never swapped in silently."""
    differ, entries = [], 0
    for name in saved.names:
        if name not in given:
            differ.append(name)
            continue
        n = int((given.get(name, "cpu") != saved.get(name, "cpu")).sum())
        if n:
            differ.append(name)
            entries += n
    if not differ:
        return
    what = f"{entries} entries in {len(differ)} of {len(saved)} matrices (first: {differ[0]!r})"
    if moving:
        logger.info("Resuming from %s with its masks, moved during training (%s differ from the starting masks).",
                    checkpoint, what)
        return
    raise ValueError(
        f"Resuming from {checkpoint}: its sparsity masks differ from the ones this trainer was given "
        f"({given.source or 'sparsity_masks='}): {what}. Resume with the model and sparsity_masks the run started "
        "with, or start a new run; the checkpoint's masks are never swapped in silently."
    )
