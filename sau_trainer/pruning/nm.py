"""Sparsity structures and the mask-selection helpers shared by every pruner.

A structure is ``"unstructured"`` or ``"N:M"``: at most N surviving weights in every group of M
consecutive input columns of a row (NVIDIA's convention, so ``2:4`` keeps 2 of every 4 and is
50% sparse). Groups are aligned to multiples of M along the input dimension.

All masks here are bool with True = surviving (the convention of `sau_trainer.masks`). Ties in the
scores are broken by a stable sort (the lower index is pruned first), so results are deterministic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class Structure:
    """A parsed sparsity structure: ``n == m == 0`` means unstructured."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        """The sparsity an N:M pattern implies (None for unstructured)."""
        return 1.0 - self.n / self.m if self.is_nm else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def parse_structure(structure: str | Structure | None) -> Structure:
    """Parse ``"unstructured"`` (or None) or ``"N:M"`` with 1 <= N < M; raise a ValueError otherwise."""
    if isinstance(structure, Structure):
        return structure
    if structure is None or str(structure).strip().lower() in ("unstructured", ""):
        return Structure()
    match = _NM_RE.match(str(structure))
    if not match:
        raise ValueError(
            f"structure={structure!r} is not understood: use 'unstructured' or an N:M pattern such as '2:4' "
            "or '4:8' (at most N surviving weights in every M consecutive inputs)."
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise ValueError(
            f"structure={structure!r} is not a valid N:M pattern: N (the weights kept per group) must satisfy "
            f"1 <= N < M, e.g. '2:4' (50% sparse) or '1:4' (75% sparse)."
        )
    return Structure(n, m)


def resolve_sparsity(sparsity: float | None, structure: Structure) -> float:
    """Check the target sparsity (in [0, 1)) and reconcile it with an N:M pattern.

    With N:M the sparsity is fixed by the pattern; ``None`` takes it from there, and an explicit value
    that disagrees is an error rather than being silently ignored.
    """
    if structure.is_nm:
        implied = structure.sparsity
        if sparsity is not None and not math.isclose(float(sparsity), implied, abs_tol=1e-9):
            raise ValueError(
                f"structure={str(structure)!r} implies sparsity {implied:g} but sparsity={sparsity!r} was given: "
                f"pass sparsity={implied:g} (or sparsity=None) with this pattern."
            )
        return implied
    if sparsity is None:
        sparsity = 0.5
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity={sparsity!r} is not a number; pass a fraction in [0, 1), e.g. 0.5.") from None
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(
            f"sparsity={sparsity!r} is outside [0, 1): it is the fraction of weights set to zero, "
            "e.g. 0.5 for half of every matrix (1.0 would delete the matrix)."
        )
    return value


def num_pruned(numel: int, sparsity: float) -> int:
    """How many of `numel` entries a target `sparsity` prunes (rounded down, as in the reference code)."""
    return int(numel * sparsity + 1e-9)


def lowest_k_mask(scores: torch.Tensor, k: int, dim: int | None = -1) -> torch.Tensor:
    """Keep-mask pruning the `k` lowest scores along `dim` (every slice loses exactly k entries).

    ``dim=None`` ranks the whole tensor at once. Ties are broken by position (the lower index is
    pruned first), as a stable sort would, but with a selection (`kthvalue`) instead of a full sort.
    """
    if dim is None:
        return _lowest_k_rows(scores.reshape(1, -1), k).view(scores.shape)
    moved = scores.movedim(dim, -1)
    keep = _lowest_k_rows(moved.reshape(-1, moved.shape[-1]), k).reshape(moved.shape)
    return keep.movedim(-1, dim)


def _lowest_k_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    rows, n = x.shape
    if k <= 0 or n == 0:
        return torch.ones(x.shape, dtype=torch.bool, device=x.device)
    if k >= n:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    threshold = x.kthvalue(k, dim=1, keepdim=True).values
    below = x < threshold
    need = k - below.sum(1, keepdim=True)  # how many entries equal to the threshold go too
    tied = x == threshold
    pruned = below | (tied & (tied.cumsum(1) <= need))
    return ~pruned


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask of an (rows, cols) score matrix with exactly n survivors in each group of m columns."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"An {n}:{m} pattern needs the input dimension ({cols}) to be a multiple of {m}.")
    grouped = scores.reshape(rows, cols // m, m)
    return lowest_k_mask(grouped, m - n, dim=-1).reshape(rows, cols)


def check_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every aligned group of m entries along the last dim has exactly n survivors."""
    rows = mask.reshape(-1, mask.shape[-1])
    return bool((rows.reshape(rows.shape[0], -1, m).sum(-1) == n).all())
