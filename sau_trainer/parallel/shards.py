"""SAU's selection and redistribution on parameter shards (FSDP2), with the single-process semantics.

Under FSDP2 (``fully_shard``) every parameter is a DTensor sharded along its first dimension (``Shard(0)``): rank
``r`` holds rows ``[r * c, min((r + 1) * c, n))`` with ``c = ceil(n / world)``, the last shards shorter or empty
when ``n`` is not divisible by the world size (torch.chunk's split). A `RowShard` names that range. The masks
``M`` and ``G`` of a parameter are used as the same rows of the full mask (bit planes of the local rows), so the
mask passes run on local shards with no communication.

Selection (SPEC section 2, `sau_trainer.sau`) picks the top ``ceil(k |S|)`` surviving entries of a unit by
saliency, ties to the lower flat index. A unit that lies within one rank's rows (an output row; an expert of a
fused expert tensor, whose first dimension is the expert) is selected locally with `sau.select_topk`, exactly as
on one process. A unit that spans ranks (a whole plain matrix, a 1-D dense vector, or every matrix together for
the ``global`` scope) is selected by a distributed threshold search (`threshold_select`): a bisection over the
float bit patterns of the saliency (monotone for ``s >= 0``) with the counts all-reduced, then the ties at the
threshold handed out in (matrix order, rank order, local flat order), which is the flat-index order of one
process because the shards are contiguous row blocks. The result is exact: the same ``G`` as one process given the
same saliency. ``W`` uses `sau.redistribution_weights` on the local rows with its per-unit sums all-reduced
where a unit spans ranks (float64 sums, so ``W`` differs from one process's by the summation order only).

`build_sharded_sau_state` returns the full (unsharded) `SAUState` on every rank, on the CPU, so that
``trainer.sau_state.mask(name)`` and the saved files are those of one process; the trainer keeps the local rows
of ``G`` and ``W`` on the device for its passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .fused import pack_planes
from .masks import PLAIN, Layout
from .sau import SAUState, _selected_range, redistribution_weights, select_topk, topk_count

_INF_BITS = 0x7F800000


def is_sharded(t) -> bool:
    """True for a DTensor (a sharded parameter or gradient)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (sharing its storage: in-place changes reach the parameter), else `t`."""
    return t.to_local() if is_sharded(t) else t


@dataclass(frozen=True)
class RowShard:
    """Rows ``[start, stop)`` of a parameter of full `shape` held by this rank, and the process group."""

    shape: tuple[int, ...]
    start: int
    stop: int
    world: int
    rank: int
    group: object = None

    @classmethod
    def of(cls, name: str, p: torch.Tensor) -> RowShard:
        from torch.distributed.tensor import Shard

        mesh, placements = p.device_mesh, tuple(p.placements)
        if mesh.ndim != 1 or placements != (Shard(0),):
            raise ValueError(
                f"{name} is sharded as {placements} over a {mesh.ndim}-D device mesh; sau-trainer supports FSDP2's "
                "default sharding (Shard(0) over one mesh dimension). Use fully_shard without a custom shard placement "
                "or tensor/hybrid parallelism."
            )
        world, rank = mesh.size(), mesh.get_local_rank()
        n = int(p.shape[0])
        c = -(-n // world)
        start = min(rank * c, n)
        stop = min(start + c, n)
        local_rows = int(p.to_local().shape[0]) if p.dim() else 0
        if local_rows != stop - start:
            raise ValueError(f"{name}: the local shard has {local_rows} rows, expected {stop - start} (rows "
                             f"{start}:{stop} of {n} over {world} ranks); an unknown sharding.")
        return cls(tuple(int(s) for s in p.shape), start, stop, world, rank, mesh.get_group())

    @property
    def chunk(self) -> int:
        return -(-self.shape[0] // self.world)

    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full-shape tensor (a 0-d tensor, e.g. a per-matrix ``W``, is returned as is)."""
        return full if full.dim() == 0 else full[self.start : self.stop]

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """The full tensor from every rank's rows (all ranks call it): padded to equal chunks, all-gathered, cut."""
        c = self.chunk
        dtype = part.dtype
        send = part.to(torch.uint8) if dtype == torch.bool else part
        if send.shape[0] < c:
            pad = send.new_zeros((c - send.shape[0], *send.shape[1:]))
            send = torch.cat([send, pad])
        bufs = [torch.empty_like(send) for _ in range(self.world)]
        dist.all_gather(bufs, send.contiguous(), group=self.group)
        full = torch.cat(bufs)[: self.shape[0]]
        return full.to(dtype) if dtype == torch.bool else full


def spans_ranks(layout: Layout, ndim: int, unit: str) -> bool:
    """Whether one selection unit (``matrix`` or ``row``) of a parameter spans several ranks' rows."""
    if layout.experts:
        return False  # the first dimension is the expert: every expert's matrix and rows lie on one rank
    return ndim < 2 or unit == "matrix"


def _all_reduce(t: torch.Tensor, group=None, op=None, device=None) -> torch.Tensor:
    """Sum `t` over the ranks in place; with `device`, through a copy there (NCCL reduces only GPU tensors)."""
    if device is not None and t.device != torch.device(device):
        moved = t.to(device)
        dist.all_reduce(moved, op=op or dist.ReduceOp.SUM, group=group)
        t.copy_(moved)
        return t
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM, group=group)
    return t


def threshold_select(
    groups: list[list[tuple[torch.Tensor, torch.Tensor]]], k: float, group=None
) -> list[list[torch.Tensor]]:
    """Distributed top-``ceil(k |S|)`` per group of local shards, exact, ties by (item order, rank, local index).

    Each group is a list of ``(saliency, alive)`` local shards (any shapes) that are selected together: one item for
    a whole matrix, several for the ``global`` scope. Every rank passes the same groups in the same order. Returns
    the local bool selection of every item. About 31 all-reduces of one int64 per group in all, plus one
    all-gather of the tie counts.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    device = next((s.device for items in groups for s, _ in items), None)  # where the collectives run
    bits = [[s.float().contiguous().view(torch.int32).reshape(-1) for s, _ in items] for items in groups]
    alive = [[a.reshape(-1).bool() for _, a in items] for items in groups]
    n_groups = len(groups)
    sizes = _all_reduce(torch.tensor([sum(int(a.sum()) for a in al) for al in alive], dtype=torch.int64), group,
                        device=device)
    quota = torch.tensor([topk_count(int(n), k) for n in sizes.tolist()], dtype=torch.int64)
    lo = torch.zeros(n_groups, dtype=torch.int64)
    hi = torch.full((n_groups,), _INF_BITS, dtype=torch.int64)

    def counts(thresholds: torch.Tensor, strict: bool) -> torch.Tensor:
        out = torch.zeros(n_groups, dtype=torch.int64)
        for g in range(n_groups):
            t = int(thresholds[g])
            out[g] = sum(int(((b > t) if strict else (b >= t)).logical_and_(a).sum()) for b, a in zip(bits[g], alive[g], strict=True))
        return _all_reduce(out, group, device=device)

    while bool((lo < hi).any()):  # the same on every rank: lo and hi come from reduced counts
        mid = (lo + hi + 1) // 2
        ok = counts(mid, strict=False) >= quota
        active = lo < hi
        lo = torch.where(active & ok, mid, lo)
        hi = torch.where(active & ~ok, mid - 1, hi)
    remaining = quota - counts(lo, strict=True)
    ties_local = torch.tensor([int((b == int(lo[g])).logical_and_(a).sum()) for g in range(n_groups)
                               for b, a in zip(bits[g], alive[g], strict=True)], dtype=torch.int64)
    ties_local = ties_local.to(device) if device is not None else ties_local
    gathered = [torch.empty_like(ties_local) for _ in range(world)]
    dist.all_gather(gathered, ties_local, group=group)
    ties = torch.stack(gathered).cpu()  # [world, items]
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
    return [[sel.reshape(items[i][0].shape) for i, sel in enumerate(chosen)] for chosen, items in zip(out, groups, strict=True)]


def check_finite(saliency: Mapping[str, torch.Tensor], group=None) -> None:
    """`sau._check_saliency` over all ranks' shards (collective: every rank raises or none does)."""
    bad = torch.tensor([sum(int((~torch.isfinite(s)).sum()) for s in saliency.values())], dtype=torch.int64)
    device = next((s.device for s in saliency.values()), None)
    if int(_all_reduce(bad, group, device=device)[0]):
        raise ValueError("The saliency contains NaN or inf: the forget loss diverged in the saliency pass.")


def build_sharded_sau_state(
    saliency: dict[str, torch.Tensor],
    surviving: Mapping[str, torch.Tensor],
    shards: Mapping[str, RowShard],
    k: float,
    alpha: float,
    scope: str = "matrix",
    redistribution: str = "matrix",
    settings: dict | None = None,
    global_names: list[str] | None = None,
    layouts: Mapping[str, Layout] | None = None,
) -> SAUState:
    """`sau.build_sau_state` for local shards: `saliency` and `surviving` hold this rank's rows of every
    parameter (`shards` says which); every rank gets the full state (on the CPU), equal to one process's."""
    from .sau import SCOPES

    if scope not in SCOPES:
        raise ValueError(f"sau_topk_scope must be one of {SCOPES}, got {scope!r}")
    names = list(saliency)
    group = shards[names[0]].group if names else None
    check_finite(saliency, group)
    layouts = layouts or {}
    unit = "row" if scope == "row" else "matrix"
    selected: dict[str, torch.Tensor] = {}
    searched: list[list[str]] = []
    pool = set(global_names if global_names is not None else names) if scope == "global" else set()
    if pool:
        searched.append([n for n in names if n in pool])
    for n in names:
        if n not in pool and spans_ranks(layouts.get(n, PLAIN), len(shards[n].shape), unit):
            searched.append([n])
    if searched:
        picks = threshold_select([[(saliency[n], surviving[n]) for n in grp] for grp in searched], k, group)
        for grp, sels in zip(searched, picks, strict=True):
            selected.update(zip(grp, sels, strict=True))
    state = SAUState(selected={}, shapes={}, settings=dict(settings or {}), packing="planes")
    sums = []
    for n in names:
        s, m, layout, shard = saliency[n], surviving[n], layouts.get(n, PLAIN), shards[n]
        g = selected[n] if n in selected else select_topk(s, m, k, unit, layout)
        w_unit = "row" if redistribution == "row" else "matrix"
        spans = spans_ranks(layout, s.dim(), w_unit)
        w = redistribution_weights(s, m, g, alpha, redistribution, layout,
                                   reduce=(lambda t: _all_reduce(t, group)) if spans else None)
        sd = s.double()
        sums.append(torch.stack([(sd * ~m.bool()).sum(), (sd * g).sum()]))
        g_full = shard.gather(g)
        state.selected[n] = pack_planes(g_full.cpu())
        state.shapes[n] = shard.shape
        if w is not None:
            state.weights[n] = _gather_w(w, shard, spans, layout, redistribution).cpu()
        m_full_alive = int(_all_reduce(torch.tensor([int(m.sum())], dtype=torch.int64), group, device=s.device)[0])
        state.stats[n] = {
            "selected": int(g_full.sum()),
            "surviving": m_full_alive,
            "selected_fraction": int(g_full.sum()) / max(m_full_alive, 1),
            "w_min": _selected_range(state.weights.get(n), g_full.cpu(), min),
            "w_max": _selected_range(state.weights.get(n), g_full.cpu(), max),
        }
    if names:
        reduced = _all_reduce(torch.stack(sums), group)
        for n, (i_p, i_g) in zip(names, reduced.tolist(), strict=True):
            state.stats[n]["pruned_over_selected"] = i_p / i_g if i_g > 0 else 0.0
    return state


def _gather_w(w: torch.Tensor, shard: RowShard, spans: bool, layout: Layout, mode: str) -> torch.Tensor:
    """The full ``W`` of one parameter, shaped as one process shapes it (`sau.redistribution_weights`)."""
    if spans and w.dim() == 0:
        return w  # one number for the whole unit, the same on every rank
    if not layout.experts and mode == "row":  # [rows, 1]; a one-row local shard comes back 0-d
        full = shard.gather(w.reshape(-1, 1))
        return full.reshape(()) if shard.shape[0] == 1 else full
    return shard.gather(w)
