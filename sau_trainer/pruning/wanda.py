"""Wanda: pruning by weights and activations (Sun, Liu, Bair and Kolter, 2023,
"A Simple and Effective Pruning Approach for Large Language Models", arXiv 2306.11695).

Each weight is scored ``|W_ij| * ||X_j||_2``, the weight's magnitude times the L2 norm of its
input feature over all calibration tokens, and the scores are compared *within each output row*
(the paper's "per output" comparison group): every row loses exactly ``int(in_features * sparsity)``
weights, or ``M - N`` of every N:M group. Surviving weights are not updated.

Written from the paper; the authors' MIT-licensed code was only read for facts.
"""

from __future__ import annotations

import torch

from .nm import Structure, lowest_k_mask, nm_mask, num_pruned


def wanda_scores(weight: torch.Tensor, act_norm_sq: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||_2`` with `act_norm_sq` the per-input-channel sum of squared activations."""
    if act_norm_sq.shape != (weight.shape[1],):
        raise ValueError(
            f"act_norm_sq has shape {tuple(act_norm_sq.shape)}, expected ({weight.shape[1]},): one entry per input channel"
        )
    norms = act_norm_sq.to(device=weight.device, dtype=torch.float32).clamp_min(0).sqrt()
    return weight.detach().abs().float() * norms.unsqueeze(0)


def wanda_mask(weight: torch.Tensor, act_norm_sq: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Keep-mask (True = surviving): the lowest Wanda scores of each output row (or N:M group) are pruned."""
    scores = wanda_scores(weight, act_norm_sq)
    if m:
        return nm_mask(scores, n, m)
    return lowest_k_mask(scores, num_pruned(weight.shape[1], sparsity), dim=1)


class WandaPruner:
    """Registry entry: needs the per-input-channel squared norms; the new weight is ``W * mask``."""

    name = "wanda"
    statistic = "act_norm_sq"

    def prune(self, weight: torch.Tensor, stat: torch.Tensor, sparsity: float, structure: Structure, **options):
        mask = wanda_mask(weight, stat, sparsity, structure.n, structure.m)
        return weight.detach() * mask.to(weight.dtype), mask, {}
