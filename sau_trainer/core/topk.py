"""The top-``q`` count and the exact top-``q`` threshold search: the one owner of SAU's selection by threshold.

`topk_count` is how many entries ``k`` selects: ``ceil(k * n)``, ``k`` read as the decimal it is written as.

`threshold_select` finds, for each group of tensors, the ``q``-th largest value by a bisection over the float
bit patterns (monotone for values ``>= 0``; 31 counts at most), then hands out the ties at that value in (item
order, rank order, flat order). No tensor is sorted, concatenated or copied (an fp32 tensor's bit view is free),
so a group may be every prunable matrix of a model. It serves two callers with the same code:
* one process (`sau_trainer.core.selection.select_topk_global`: every matrix in one group), where the
  reductions are the identity (`ONE_PROCESS`);
* ranks that each hold a block of rows (FSDP2, a unit that spans ranks: `sau_trainer.training.state`,
  `sau_trainer.parallel.weights`), with the counts all-reduced and the tie counts all-gathered by a
  `sau_trainer.parallel.backend.Backend`. Every rank holds a contiguous block of rows, so (rank, local flat
  order) is the flat order of the whole tensor: the selection is the one-process selection, exactly.

The core makes no collective call itself: the reductions come in as an object (`Reductions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Protocol

import torch

_INF_BITS = 0x7F800000  # +inf's bit pattern: every finite value >= +0.0 is below it


def _fraction(k: float) -> Fraction:
    if not 0 < k <= 1:
        raise ValueError(f"sau_topk must be in (0, 1], got {k}")
    return Fraction(repr(float(k)))


def topk_count(n: int, k: float) -> int:
    """``ceil(k * n)`` with `k` taken as its decimal value (no float round-up surprises)."""
    f = _fraction(k)
    return -((-f.numerator * n) // f.denominator)


class Reductions(Protocol):
    """What the search asks of the processes: their number, this one's rank, the sum of an int64 vector over
    them (in place, returned) and the gather of one (``[world, *shape]``). `parallel.backend.Backend` is one."""

    world: int
    rank: int

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def all_gather(self, t: torch.Tensor) -> torch.Tensor: ...


class _OneProcess:
    world, rank = 1, 0

    @staticmethod
    def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
        return t

    @staticmethod
    def all_gather(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(0)


ONE_PROCESS: Reductions = _OneProcess()

# An item's masks: a tensor, or a function returning it (looked up on every use, so a caller can unpack one bit-
# packed mask at a time instead of holding every one).
Mask = torch.Tensor | Callable[[], torch.Tensor]


def _flat(mask: Mask) -> torch.Tensor:
    return (mask() if callable(mask) else mask).reshape(-1).bool()


def threshold_select(
    groups: Sequence[Sequence[tuple]], k: float | None, reductions: Reductions | None = None,
    quotas: Sequence[int] | None = None,
) -> list[list[torch.Tensor]]:
    """Top ``ceil(k |S|)`` (or ``quotas[g]``) entries per group, exact, ties by (item, rank, flat index).

    Each group is a list of items ``(values, alive)`` or ``(values, alive, budget)``: tensors (any shapes; on
    several processes, this rank's block of rows) of finite non-negative values, the entries that may be selected,
    and (the moving mask) the mask whose count ``|S|`` sets the quota instead of `alive`'s; `alive` and `budget`
    may be functions returning the mask (`Mask`). Every process passes the same groups in the same order.
    `reductions`: None for one process. Returns the bool selection of every item, in the items' shapes. About 31
    all-reduces of one int64 vector in all, plus one all-gather.
    """
    red = ONE_PROCESS if reductions is None else reductions
    world, rank = red.world, red.rank
    bits = [[it[0].float().contiguous().view(torch.int32).reshape(-1) for it in items] for items in groups]
    alive = [[it[1] for it in items] for items in groups]
    n_groups = len(groups)
    if quotas is None:
        counted = [[it[2] if len(it) > 2 and it[2] is not None else it[1] for it in items] for items in groups]
        sizes = red.all_reduce_sum(torch.tensor([sum(int(_flat(a).sum()) for a in al) for al in counted],
                                                dtype=torch.int64))
        quota = torch.tensor([topk_count(int(n), k) for n in sizes.tolist()], dtype=torch.int64)
    else:
        quota = torch.tensor([int(q) for q in quotas], dtype=torch.int64)
    lo = torch.zeros(n_groups, dtype=torch.int64)
    hi = torch.full((n_groups,), _INF_BITS, dtype=torch.int64)

    def counts(thresholds: torch.Tensor, strict: bool) -> torch.Tensor:
        out = torch.zeros(n_groups, dtype=torch.int64)
        for g in range(n_groups):
            t = int(thresholds[g])
            out[g] = sum(int(((b > t) if strict else (b >= t)).logical_and_(_flat(a)).sum())
                         for b, a in zip(bits[g], alive[g], strict=True))
        return red.all_reduce_sum(out)

    while bool((lo < hi).any()):  # the same on every rank: lo and hi come from reduced counts
        mid = (lo + hi + 1) // 2
        ok = counts(mid, strict=False) >= quota
        active = lo < hi
        lo = torch.where(active & ok, mid, lo)
        hi = torch.where(active & ~ok, mid - 1, hi)
    remaining = quota - counts(lo, strict=True)
    ties_local = torch.tensor([int((b == int(lo[g])).logical_and_(_flat(a)).sum()) for g in range(n_groups)
                               for b, a in zip(bits[g], alive[g], strict=True)], dtype=torch.int64)
    ties = red.all_gather(ties_local).cpu()  # [world, items]
    out, j = [], 0
    for g in range(n_groups):
        rem, chosen = int(remaining[g]), []
        for b, a in zip(bits[g], alive[g], strict=True):
            take = 0
            for r in range(world):  # the ranks before this one take their ties first
                n_r = min(max(rem, 0), int(ties[r, j]))
                if r == rank:
                    take = n_r
                rem -= n_r
            t, a = int(lo[g]), _flat(a)
            sel = (b > t).logical_and_(a)
            if take:
                idx = (b == t).logical_and_(a).nonzero().squeeze(1)[:take]
                sel[idx] = True
            chosen.append(sel)
            j += 1
        out.append(chosen)
    return [[sel.reshape(items[i][0].shape) for i, sel in enumerate(chosen)]
            for chosen, items in zip(out, groups, strict=True)]
