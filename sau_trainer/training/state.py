"""The SAU state: ``G`` and ``W`` of every masked parameter, built once for every backend, and its file.

`build_sau_state` puts the pure selection and redistribution functions of `sau_trainer.core.selection` together,
and asks a backend (`sau_trainer.parallel.backend`) the only questions that differ between one process, DDP,
FSDP2 and DeepSpeed ZeRO: which rows it holds, whether a unit spans ranks, the all-reduce of sums and counts, the
gather of a full tensor. On one process (or DDP, or ZeRO, where every rank holds the whole saliency) the answers
are trivial and the result is the plain one; under FSDP2 every option gives the single-process ``G`` and ``W``
(SPEC section 8). It lives with the Trainer glue because it puts the two lower layers together (`core` and
`parallel` may not import each other's callers); `sau_trainer.sau` re-exports it and the pure functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..core.bits import from_planes, pack_bool, pack_planes, to_planes, unpack_bool, unpack_planes
from ..core.prunable import PLAIN, Layout
from ..core.selection import (
    SCOPES,
    redistribution_weights,
    retain_aware_score,
    select_mass,
    select_topk,
    select_topk_global,
)
from ..core.topk import threshold_select

STATE_FILE = "sau_state.safetensors"


@dataclass
class SAUState:
    """``G`` (bit-packed) and ``W`` per parameter, the settings that made them, and their statistics."""

    selected: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    # How `selected` is packed in memory: "sequential" (`pack_bool`, the file's format) or "planes" (bit planes,
    # `sau_trainer.fused`, what the fused passes read). `build_sau_state` and `load` give planes; `save` writes
    # the file format whatever this says.
    packing: str = "sequential"

    def mask(self, name: str, device=None) -> torch.Tensor:
        """The full-shape bool ``G`` of one parameter."""
        packed = self.selected[name] if device is None else self.selected[name].to(device)
        if self.packing == "planes":
            return unpack_planes(packed, self.shapes[name])
        return unpack_bool(packed, self.shapes[name])

    def planes(self, name: str, device=None) -> torch.Tensor:
        """``G`` of one parameter as bit planes (converting the whole state to planes on first use)."""
        if self.packing != "planes":
            self.to_planes()
        packed = self.selected[name]
        return packed if device is None else packed.to(device)

    def to_planes(self) -> SAUState:
        """Keep ``G`` as bit planes in memory (in place; the files keep the sequential format)."""
        if self.packing == "sequential":
            self.selected = {k: to_planes(v, self.shapes[k]) for k, v in self.selected.items()}
            self.packing = "planes"
        return self

    def weight(self, name: str) -> torch.Tensor | None:
        return self.weights.get(name)

    def to(self, device) -> SAUState:
        self.selected = {k: v.to(device) for k, v in self.selected.items()}
        self.weights = {k: v.to(device) for k, v in self.weights.items()}
        return self

    def save(self, directory: str | os.PathLike) -> str:
        seq = (lambda k, v: from_planes(v, self.shapes[k])) if self.packing == "planes" else (lambda k, v: v)
        tensors = {f"G/{k}": seq(k, v.detach().cpu()).contiguous() for k, v in self.selected.items()}
        tensors |= {f"W/{k}": v.detach().cpu().float().contiguous() for k, v in self.weights.items()}
        tensors |= {f"X/{k}": v.detach().cpu().contiguous() for k, v in self.extra.items()}
        meta = {
            "format": "sau-trainer/sau-state",
            "version": "1",
            "shapes": json.dumps(self.shapes),
            "settings": json.dumps(self.settings, sort_keys=True),
            "stats": json.dumps(self.stats),
        }
        path = os.path.join(os.fspath(directory), STATE_FILE)
        save_file(tensors, path, metadata=meta)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SAUState:
        path = os.path.join(os.fspath(directory), STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No SAU state at {path}")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            if meta.get("format") != "sau-trainer/sau-state":
                raise ValueError(f"{path} is not a sau-trainer SAU state file")
            parts: dict[str, dict] = {"G": {}, "W": {}, "X": {}}
            for key in f.keys():
                kind, name = key.split("/", 1)
                parts[kind][name] = f.get_tensor(key)
        return cls(
            selected=parts["G"],
            shapes={k: tuple(v) for k, v in json.loads(meta["shapes"]).items()},
            weights=parts["W"],
            settings=json.loads(meta["settings"]),
            stats=json.loads(meta["stats"]),
            extra=parts["X"],
        ).to_planes()


def build_sau_state(
    saliency: dict[str, torch.Tensor],
    surviving: Mapping[str, torch.Tensor],
    k: float,
    alpha: float,
    scope: str = "matrix",
    redistribution: str = "matrix",
    settings: dict | None = None,
    global_names: list[str] | None = None,
    layouts: Mapping[str, Layout] | None = None,
    score: Mapping[str, torch.Tensor] | None = None,
    mass: float | None = None,
    candidates: Mapping[str, torch.Tensor] | None = None,
    retain: Mapping[str, torch.Tensor] | None = None,
    retain_eps: float = 0.01,
    backend=None,
) -> SAUState:
    """Select ``G`` and compute ``W`` for every parameter in `saliency` (same keys as `surviving`).

    With ``scope="global"`` the pool is `global_names` (default: all); other parameters (dense ones
    selected with ``sau_dense_params="topk"``) are selected per matrix. `surviving` may be lazy. `layouts`
    names the fused expert tensors, whose experts are selected and weighted one by one (default: plain
    matrices).

    Options (each off by default, then the result is the one described above): `retain` (a second saliency, on
    the retain set) selects by `retain_aware_score` with `retain_eps`, or `score` by any other value than the
    saliency (``W`` still comes from the saliency); `mass` selects per unit by `select_mass` instead of ``k``;
    `candidates` (masks) selects among these entries instead of the surviving ones, ``ceil(k |S|)`` of them per
    unit (the moving mask: `sau_trainer.moving_mask`).

    `backend` (`sau_trainer.parallel.backend`; None: one process): under FSDP2 `saliency`, `surviving`, `retain`
    and `candidates` hold this rank's rows of every parameter. A unit within one rank's rows (an output row, an
    expert) is selected locally; a unit that spans ranks by the exact threshold search over shards
    (`core.topk.threshold_select`), or, for `mass` (a cumulative sum in the ``(-s, index)`` order, which a
    search over shards would reproduce only up to the float64 summation order), by `select_mass` on the unit
    gathered to every rank, one parameter at a time. The retain mean of `retain_aware_score` and the sums of ``W``
    are all-reduced. Every rank gets the full state (on the CPU), equal to one process's.
    """
    if scope not in SCOPES:
        raise ValueError(f"sau_topk_scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global" and (mass is not None or candidates is not None):
        raise ValueError("sau_topk_scope='global' does not combine with sau_topk_mass or sau_moving_mask: "
                         "use sau_topk_scope='matrix' or 'row'.")
    names, layouts = list(saliency), dict(layouts or {})
    sharded = backend is not None and backend.sharded
    if sharded:
        _check_finite_everywhere(saliency, backend)
    if retain is not None:
        score = {n: retain_aware_score(saliency[n], retain[n], retain_eps,
                                       retain_mean=_full_mean(retain[n], backend) if sharded else None)
                 for n in names}
    score = saliency if score is None else score
    unit = "row" if scope == "row" else "matrix"
    pool = set(global_names if global_names is not None else names) if scope == "global" else set()
    selected: dict[str, torch.Tensor] = {}  # bool G of the parameters selected as a whole or in a pool
    if scope == "global" and not sharded:
        picked = select_topk_global({n: score[n] for n in names if n in pool}, surviving, k)
        selected = {n: pack_bool(g) for n, g in picked.items()}  # packed: the pool's masks wait for their turn
    elif sharded:
        searched = [[n for n in names if n in pool]] if pool else []
        for n in names:
            if n in pool or not backend.spans(n, layouts.get(n, PLAIN), saliency[n].dim(), unit):
                continue
            if mass is not None:
                selected[n] = backend.local_rows(n, select_mass(
                    backend.gather(n, score[n]), backend.gather(n, surviving[n]), mass, unit, layouts.get(n, PLAIN)))
            else:
                searched.append([n])
        if searched:
            groups = [[(score[n], surviving[n] if candidates is None else candidates[n],
                        None if candidates is None else surviving[n]) for n in grp] for grp in searched]
            for grp, sels in zip(searched, threshold_select(groups, k, backend), strict=True):
                selected.update(zip(grp, sels, strict=True))
    state = SAUState(selected={}, shapes={}, settings=dict(settings or {}), packing="planes")
    sums = []
    for n in names:
        s, m, layout = saliency[n], surviving[n], layouts.get(n, PLAIN)
        if n in selected:
            g = selected[n] if sharded else unpack_bool(selected.pop(n), s.shape)
        else:
            pool_n = m if candidates is None else candidates[n]
            g = (select_topk(score[n], pool_n, k, unit, layout, budget=None if candidates is None else m)
                 if mass is None else select_mass(score[n], pool_n, mass, unit, layout))
        w_spans = sharded and backend.spans(n, layout, s.dim(), "row" if redistribution == "row" else "matrix")
        w = redistribution_weights(s, m, g, alpha, redistribution, layout,
                                   reduce=backend.all_reduce_sum if w_spans else None)
        sd = s.double()
        sums.append(torch.stack([(sd * ~m.bool()).sum(), (sd * g.bool()).sum(), torch.tensor(float(m.sum()),
                                                                                            dtype=torch.float64)]))
        if sharded:
            g = backend.gather(n, g).cpu()
            w = None if w is None else _gather_w(w, n, backend, w_spans, layout, redistribution).cpu()
        state.selected[n] = pack_planes(g)
        state.shapes[n] = backend.full_shape(n, s) if sharded else tuple(s.shape)
        if w is not None:
            state.weights[n] = w
        state.stats[n] = {"selected": int(g.sum()), "w_min": _selected_range(w, g, min),
                          "w_max": _selected_range(w, g, max)}
    if names:  # I_P, I_G and |S| of every parameter: one reduction for all
        totals = torch.stack(sums)
        if sharded:
            totals = backend.all_reduce_sum(totals)
        for n, (i_p, i_g, alive) in zip(names, totals.tolist(), strict=True):
            stats = state.stats[n]
            stats["surviving"] = int(alive)
            stats["selected_fraction"] = stats["selected"] / max(int(alive), 1)
            stats["pruned_over_selected"] = i_p / i_g if i_g > 0 else 0.0
            state.stats[n] = {key: stats[key] for key in ("selected", "surviving", "selected_fraction",
                                                          "pruned_over_selected", "w_min", "w_max")}
    return state


def _check_finite_everywhere(saliency: Mapping[str, torch.Tensor], backend) -> None:
    """`_check_saliency` over all ranks' shards (collective: every rank raises or none does)."""
    bad = torch.tensor([sum(int((~torch.isfinite(s)).sum()) for s in saliency.values())], dtype=torch.int64)
    if int(backend.all_reduce_sum(bad)[0]):
        raise ValueError("The saliency contains NaN or inf: the forget loss diverged in the saliency pass.")


def _full_mean(part: torch.Tensor, backend) -> torch.Tensor:
    """The mean of a whole parameter's tensor from this rank's rows (float64 sum and count, all-reduced)."""
    t = backend.all_reduce_sum(torch.stack([part.double().sum(), torch.tensor(float(part.numel()),
                                                                              dtype=torch.float64)]))
    return t[0] / t[1].clamp_min(1)


def _gather_w(w: torch.Tensor, name: str, backend, spans: bool, layout: Layout, mode: str) -> torch.Tensor:
    """The full ``W`` of one parameter, shaped as one process shapes it (`redistribution_weights`)."""
    if spans and w.dim() == 0:
        return w  # one number for the whole unit, the same on every rank
    if not layout.experts and mode == "row":  # [rows, 1]; a one-row local shard comes back 0-d
        full = backend.gather(name, w.reshape(-1, 1))
        return full.reshape(()) if backend.full_shape(name, w)[0] == 1 else full
    return backend.gather(name, w)


def _selected_range(w: torch.Tensor | None, g: torch.Tensor, fn) -> float:
    """Min or max of ``W`` over the selected entries (a per-entry ``W`` is 1 elsewhere)."""
    if w is None:
        return 1.0
    if w.shape == g.shape:
        w = w[g]
    return float(fn(w.min(), w.max())) if w.numel() else 1.0
