"""The moving mask during training (``sau_moving_mask``): `MovingMask` keeps each unit's surviving count (or its
N:M pattern) from the start of training and projects the weights back onto it after every optimizer step.

The projections themselves, the method's description and its credits: `sau_trainer.core.projection`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..core.projection import UNITS, nm_pattern, popcount, project_nm, project_topk, unit_counts
from ..core.prunable import PLAIN, Layout
from .masks import SparsityMasks


class MovingMask:
    """The per-unit counts (or N:M patterns) of a model's sparsity masks at train start, and the projection.

    `project_` runs after every optimizer step: it replaces the re-zero of a fixed mask.
    """

    def __init__(self, masks: SparsityMasks, layouts: Mapping[str, Layout], unit: str = "matrix"):
        if unit not in UNITS:
            raise ValueError(f"sau_moving_mask must be 'off' or one of {UNITS}, got {unit!r}")
        self.unit = unit
        self.layouts = dict(layouts)
        self.counts: dict[str, torch.Tensor] = {}
        self.patterns: dict[str, tuple[int, int]] = {}
        self.initial: dict[str, torch.Tensor] = {}
        for name in masks.names:
            mask = masks.get(name)
            layout = self.layouts.get(name, PLAIN)
            pattern = nm_pattern(mask, layout)
            if pattern is not None:
                self.patterns[name] = pattern
            self.counts[name] = unit_counts(mask, unit, layout)
            self.initial[name] = masks.planes(name).clone()
        self.steps = 0

    def new_mask(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        layout = self.layouts.get(name, PLAIN)
        if name in self.patterns:
            return project_nm(weight, *self.patterns[name], layout)
        return project_topk(weight, self.counts[name], self.unit, layout)

    @torch.no_grad()
    def project_(self, params: Mapping[str, torch.Tensor], masks: SparsityMasks) -> None:
        """Keep the top entries of every unit of every parameter in `masks`, set the rest to +0.0, and store the
        new masks in `masks` (in place)."""
        if not masks.source.startswith("moved"):
            masks.source = f"moved by sau_moving_mask={self.unit!r} from: {masks.source}"
        for name in masks.names:
            p = params[name]
            keep = self.new_mask(name, p.data)
            p.data.masked_fill_(~keep, 0.0)
            masks.replace(name, keep)
        self.steps += 1

    def summary(self, masks: SparsityMasks) -> dict:
        """What moved: per matrix the fraction of the starting survivors that were replaced, the total, the unit."""
        per_matrix, moved, total = {}, 0, 0
        for name in masks.names:
            now = masks.planes(name).cpu()
            start = self.initial[name].cpu()
            lost = popcount(torch.bitwise_and(start, torch.bitwise_not(now)))
            alive = popcount(start)
            per_matrix[name] = round(lost / max(alive, 1), 6)
            moved, total = moved + lost, total + alive
        return {"moved": moved > 0, "unit": "n:m" if self.patterns else self.unit, "steps": self.steps,
                "replaced_entries": moved, "replaced_fraction": moved / max(total, 1),
                "per_matrix_replaced_fraction": per_matrix}
