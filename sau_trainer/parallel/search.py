"""The exact top-``q`` threshold search over shards (SPEC section 8), through a backend's reductions.

A selection unit that spans ranks (a whole plain matrix under FSDP2, a 1-D dense vector, or every matrix together
for the ``global`` scope) cannot be sorted on one rank. `threshold_select` finds the unit's ``q``-th largest value
by a bisection over the float bit patterns (monotone for values ``>= 0``) with the counts all-reduced, then hands
out the ties at the threshold in (item order, rank order, local flat order): the flat-index order of one process,
because every rank holds a contiguous block of rows. The result is exact, the same selection as
`core.selection.select_topk` (one unit) or `select_topk_global` (the pool) on the full tensors, and it is the same
function on one process, where the reductions do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.selection import topk_count

_INF_BITS = 0x7F800000


def threshold_select(
    groups: Sequence[Sequence[tuple]], k: float | None, backend, quotas: Sequence[int] | None = None,
) -> list[list[torch.Tensor]]:
    """Top ``ceil(k |S|)`` (or ``quotas[g]``) entries per group of local shards, exact, ties by (item, rank, index).

    Each group is a list of items ``(values, alive)`` or ``(values, alive, budget)``: local shards (any shapes) of
    non-negative values, the entries that may be selected, and (the moving mask) the mask whose count ``|S|`` sets
    the quota instead of `alive`'s. Every rank passes the same groups in the same order. `backend` gives
    ``all_reduce_sum``, ``all_gather``, ``world`` and ``rank`` (`sau_trainer.parallel.backend`). Returns the local
    bool selection of every item. About 31 all-reduces of one int64 vector in all, plus one all-gather.
    """
    world, rank = backend.world, backend.rank
    bits = [[it[0].float().contiguous().view(torch.int32).reshape(-1) for it in items] for items in groups]
    alive = [[it[1].reshape(-1).bool() for it in items] for items in groups]
    n_groups = len(groups)
    if quotas is None:
        counted = [[(it[2] if len(it) > 2 and it[2] is not None else it[1]).reshape(-1).bool() for it in items]
                   for items in groups]
        sizes = backend.all_reduce_sum(torch.tensor([sum(int(a.sum()) for a in al) for al in counted],
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
            out[g] = sum(int(((b > t) if strict else (b >= t)).logical_and_(a).sum())
                         for b, a in zip(bits[g], alive[g], strict=True))
        return backend.all_reduce_sum(out)

    while bool((lo < hi).any()):  # the same on every rank: lo and hi come from reduced counts
        mid = (lo + hi + 1) // 2
        ok = counts(mid, strict=False) >= quota
        active = lo < hi
        lo = torch.where(active & ok, mid, lo)
        hi = torch.where(active & ~ok, mid - 1, hi)
    remaining = quota - counts(lo, strict=True)
    ties_local = torch.tensor([int((b == int(lo[g])).logical_and_(a).sum()) for g in range(n_groups)
                               for b, a in zip(bits[g], alive[g], strict=True)], dtype=torch.int64)
    ties = backend.all_gather(ties_local).cpu()  # [world, items]
    out, j = [], 0
    for g in range(n_groups):
        rem, chosen = int(remaining[g]), []
        for b, a in zip(bits[g], alive[g], strict=True):
            take = 0
            for r in range(world):
                n_r = min(max(rem, 0), int(ties[r, j]))
                if r == rank:
                    take = n_r
                rem -= n_r
            t = int(lo[g])
            sel = (b > t).logical_and_(a)
            if take:
                idx = (b == t).logical_and_(a).nonzero().squeeze(1)[:take]
                sel[idx] = True
            chosen.append(sel)
            j += 1
        out.append(chosen)
    return [[sel.reshape(items[i][0].shape) for i, sel in enumerate(chosen)]
            for chosen, items in zip(out, groups, strict=True)]
