"""A sparsity mask that may move: the count per unit (and the N:M pattern) stays exact, the support may change.

``sau_moving_mask`` (off by default) trains every entry of a prunable matrix, pruned ones included (they start
at zero), and after each optimizer step keeps, per selection unit, the ``|S|`` entries of largest magnitude
(``|S|``: the unit's surviving count when training started) and sets the others to exactly zero. For a model
pruned to an N:M pattern (e.g. 2:4) the projection keeps the N largest of every M consecutive inputs instead, so
the pattern survives. Pruned capacity can thus come back where the unlearning gradient wants it, at an unchanged
sparsity and structure. It redefines SPEC section 3's first invariant for itself: the count per unit and the
pattern are exact after every step; the support may change. The final mask is what the trainer saves
(``sparsity_masks.safetensors``), and the pipeline's ``sparsity.json`` says that it moved and by how much.

Credit: this is magnitude projection onto a fixed-size support after each step, as in iterative magnitude
pruning and the prune-and-regrow family of dynamic sparse training (Evci et al., "Rigging the Lottery: Making
All Tickets Winners", ICML 2020, regrow by gradient; Mocanu et al. 2018, SET), and, for N:M, the sparse-refined
straight-through training of Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From
Scratch" (ICLR 2021), which keeps dense weights and projects them onto the N:M pattern each step. Here the
projection is applied to the weights themselves (no dense shadow copy), so entries projected away restart from
zero; the optimizer's moments are left as they are.

This module is the pure tensor math (`project_topk`, `project_nm`, `nm_pattern`, `unit_counts`);
`sau_trainer.training.moving_mask.MovingMask` holds the counts and applies them to a model's parameters, updating
a `SparsityMasks` in place.
"""

from __future__ import annotations

import torch

from .prunable import PLAIN, Layout

UNITS = ("matrix", "row")
NM_GROUPS = (4, 8)  # group sizes M checked when a mask is tested for an N:M pattern (2:4, 4:8, 1:4, ...)


def nm_pattern(mask: torch.Tensor, layout: Layout = PLAIN) -> tuple[int, int] | None:
    """``(N, M)`` when every group of M consecutive inputs of every output row of `mask` holds exactly N survivors
    (0 < N < M; the smallest such M of `NM_GROUPS`), else None."""
    units = layout.units(mask.bool())
    cols = units.shape[-1]
    for m in NM_GROUPS:
        if cols % m:
            continue
        counts = units.reshape(*units.shape[:-1], cols // m, m).sum(-1)
        n = int(counts.reshape(-1)[0])
        if 0 < n < m and bool((counts == n).all()):
            return n, m
    return None


def _top_by_magnitude(values: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    """Bool mask of the `quota` (per row, ``[rows, 1]``) entries of largest ``|value|`` in each row of `values`
    (``[rows, cols]``); ties go to the lower index."""
    order = torch.sort(-values.abs().float(), dim=1, stable=True).indices
    take = torch.arange(values.shape[1], device=values.device).unsqueeze(0) < quota
    return torch.zeros(values.shape, dtype=torch.bool, device=values.device).scatter_(1, order, take)


def project_topk(weight: torch.Tensor, counts: torch.Tensor, unit: str = "matrix", layout: Layout = PLAIN
                 ) -> torch.Tensor:
    """The mask keeping the ``counts`` largest-magnitude entries of each unit of `weight` (a matrix: one count per
    unit of `layout`; a row: one per output row, in ``[units * out]`` order). Pure: `weight` is not changed."""
    if unit not in UNITS:
        raise ValueError(f"sau_moving_mask must be one of {UNITS}, got {unit!r}")
    units = layout.units(weight.detach())
    rows = units.shape[0] if unit == "matrix" else units.shape[0] * units.shape[1]
    keep = _top_by_magnitude(units.reshape(rows, -1), counts.reshape(rows, 1).to(weight.device))
    return layout.restore(keep.reshape(units.shape), weight.shape)


def project_nm(weight: torch.Tensor, n: int, m: int, layout: Layout = PLAIN) -> torch.Tensor:
    """The N:M mask keeping the `n` largest-magnitude of every `m` consecutive inputs of each output row."""
    units = layout.units(weight.detach())
    groups = units.reshape(-1, m)
    keep = _top_by_magnitude(groups, torch.full((groups.shape[0], 1), n, device=weight.device))
    return layout.restore(keep.reshape(units.shape), weight.shape)


def unit_counts(mask: torch.Tensor, unit: str = "matrix", layout: Layout = PLAIN) -> torch.Tensor:
    """Survivors per unit of `mask` (a matrix / expert, or an output row), flat, int64."""
    units = layout.units(mask.bool())
    rows = units.shape[0] if unit == "matrix" else units.shape[0] * units.shape[1]
    return units.reshape(rows, -1).sum(1)


def popcount(planes: torch.Tensor) -> int:
    """How many bits are set in a uint8 tensor (e.g. the survivors of bit-plane masks)."""
    bits = planes.view(-1, 1) >> torch.arange(8, dtype=torch.uint8, device=planes.device)
    return int(bits.bitwise_and_(1).sum())
