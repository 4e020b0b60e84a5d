"""Magnitude pruning: drop the weights with the smallest absolute value.

The classic baseline (e.g. Han et al. 2015). No calibration data: the comparison is per matrix
(unstructured: exactly ``int(numel * sparsity)`` zeros per matrix) or per N:M group.
"""

from __future__ import annotations

import torch

from .nm import Structure, lowest_k_mask, nm_mask, num_pruned


def magnitude_mask(weight: torch.Tensor, sparsity: float, n: int = 0, m: int = 0) -> torch.Tensor:
    """Keep-mask (True = surviving) pruning the smallest ``|W|`` over the whole matrix, or per N:M group."""
    scores = weight.detach().abs()
    if m:
        return nm_mask(scores, n, m)
    return lowest_k_mask(scores, num_pruned(weight.numel(), sparsity), dim=None)


class MagnitudePruner:
    """Registry entry: needs no statistics; the new weight is ``W * mask``."""

    name = "magnitude"
    statistic = None  # no calibration pass

    def prune(self, weight: torch.Tensor, stat, sparsity: float, structure: Structure, **options):
        mask = magnitude_mask(weight, sparsity, structure.n, structure.m)
        return weight.detach() * mask.to(weight.dtype), mask, {}
