"""What a sparsity-preserving run checks and fixes before training: the model's prunable weights and their masks,
pruned entries that are not zero, and whether the optimizer leaves zero-gradient zeros where they are."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..core.prunable import Layout, check_trainable_weights, prunable_weights
from .compensated import unwrap_optimizer
from .masks import SparsityMasks

logger = logging.getLogger("sau_trainer.sparsity")  # its name before the move: users and tests set its level


def resolve_sparsity_masks(
    model: torch.nn.Module, sparsity_masks: SparsityMasks | str | os.PathLike | None, who: str = "The trainer"
) -> tuple[dict[str, torch.nn.Parameter], dict[str, Layout], SparsityMasks]:
    """Validate `model` and its masks (a `SparsityMasks`, a saved mask file, or None: inferred from the model's
    exact zeros); returns the prunable parameters, their layouts and the masks. Changes nothing."""
    weights = prunable_weights(model)  # also rejects PEFT-wrapped models
    params = {n: w.param for n, w in weights.items()}
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no prunable matrices (nn.Linear layers or fused experts inside the "
            f"language model's decoder blocks); {who} needs a decoder-only transformer such as Llama, Mistral, "
            "Qwen or Mixtral."
        )
    check_trainable_weights(params)
    if sparsity_masks is None:
        sparsity_masks = SparsityMasks.from_model(model)
    elif not isinstance(sparsity_masks, SparsityMasks):
        sparsity_masks = SparsityMasks.load(sparsity_masks, model)
    sparsity_masks.check(model)
    return params, {n: w.layout for n, w in weights.items()}, sparsity_masks


def zero_pruned_entries(model: torch.nn.Module, masks: SparsityMasks) -> None:
    """Set pruned entries that are not zero to zero, with a warning (the masks, not the zeros, are the truth)."""
    nonzero = masks.count_nonzero_pruned(model)
    if nonzero:
        logger.warning("%d pruned entries of the model were not zero; setting them to zero before training.", nonzero)
        masks.apply_(model)


# Optimizers that provably leave an entry whose gradient is always exactly zero (and whose weight is zero) where it
# is, with or without (decoupled) weight decay, momentum, amsgrad, maximize, foreach or fused kernels: every
# moment stays 0, so the step is ``+0 * (1 - lr * wd) - lr * 0 / (0 + eps) = +0`` (Adam/AdamW) or
# ``-lr * (0 + wd * 0) = +0`` (SGD). The exact class is required: a subclass may change the step.
# Not here (the re-zero stays): bitsandbytes 8-bit/paged AdamW (block-wise quantised moments move zero-gradient
# entries), stochastic-rounding and Kahan-compensated optimizers, and anything else.
ZERO_KEEPING_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def optimizer_keeps_zeros(optimizer: Any) -> bool:
    """True when `optimizer` (unwrapped from accelerate's wrapper) is exactly one of `ZERO_KEEPING_OPTIMIZERS`.

    The argument needs the pruned entries' weights and optimizer state to be zero when training starts: the
    trainer zeroes the weights; the state is empty, or was saved by a run with the same masks."""
    opt = unwrap_optimizer(optimizer)
    return type(opt) in ZERO_KEEPING_OPTIMIZERS
