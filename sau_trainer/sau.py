"""Sparsity-Aware Unlearning: the tensor math (no Trainer, no files beyond the state container).

Definitions (SPEC section 2, the project's own reading of Sparsity-Aware Unlearning, arXiv 2602.00577):

* selection ``G``: among the surviving entries ``S`` of a unit (a matrix, an output row, or all
  prunable matrices), the top ``ceil(k * |S|)`` by saliency ``s``; ties broken by a stable sort on
  ``(-s, flat index)``. ``k`` is read as the decimal it is written as (0.3 * 10 selects 3, not 4).
* redistribution ``W``: with ``I_P`` the saliency summed over pruned entries and ``I_G`` over selected
  ones, per matrix ``W = 1 + alpha * I_P / I_G``; per row the same ratio per output row; per
  parameter ``W_i = 1 + alpha * (I_P / I_G) * min(s_i / mean_G s, 10)``; ``none`` gives ``W = 1``.
  Where ``I_G = 0``, ``W = 1``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from .fused import from_planes, pack_planes, to_planes, unpack_planes
from .masks import PLAIN, Layout, pack_bool, unpack_bool

STATE_FILE = "sau_state.safetensors"
SCOPES = ("matrix", "row", "global")
REDISTRIBUTIONS = ("matrix", "row", "param", "none")
PARAM_W_CAP = 10.0


def _fraction(k: float) -> Fraction:
    if not 0 < k <= 1:
        raise ValueError(f"sau_topk must be in (0, 1], got {k}")
    return Fraction(repr(float(k)))


def topk_count(n: int, k: float) -> int:
    """``ceil(k * n)`` with `k` taken as its decimal value (no float round-up surprises)."""
    f = _fraction(k)
    return -((-f.numerator * n) // f.denominator)


def _stable_desc_order(values: torch.Tensor) -> torch.Tensor:
    """Indices sorting the last dim by ``(-value, index)``."""
    return torch.sort(-values, dim=-1, stable=True).indices


def _selection_rows(saliency: torch.Tensor, surviving: torch.Tensor, scope: str,
                    layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """The checked saliency and the surviving mask as ``[selection units, entries]``: one row per unit (a matrix,
    or one expert's) for scope ``matrix``, one per output row for ``row``; and the units' shape, to restore."""
    _check_saliency(saliency)
    units = layout.units(saliency)
    rows = units.shape[0] if scope == "matrix" else units.shape[0] * units.shape[1]
    return units.reshape(rows, -1), layout.units(surviving).reshape(rows, -1).bool(), units.shape


def select_topk(
    saliency: torch.Tensor, surviving: torch.Tensor, k: float, scope: str = "matrix", layout: Layout = PLAIN,
    budget: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask ``G`` of one parameter: the top ``ceil(k |S|)`` surviving entries per unit or per output row.

    A unit is a matrix, or one expert's matrix of a fused expert tensor (`layout`); ties go to the lower
    flat index of the unit read as ``[out, in]``. `budget` (a mask): count ``|S|`` on it instead of on
    `surviving` (the moving mask selects among all entries of a unit, as many as its surviving count gives).
    """
    if scope not in ("matrix", "row"):
        raise ValueError(f"select_topk handles scope 'matrix' or 'row'; use select_topk_global for {scope!r}")
    s, alive, units_shape = _selection_rows(saliency, surviving, scope, layout)
    s = s.float()
    values = torch.where(alive, s, torch.full_like(s, -math.inf))
    order = _stable_desc_order(values)
    # Python ints: k's exact fraction can have a 16-digit numerator, which would overflow int64.
    counted = alive if budget is None else layout.units(budget).reshape(s.shape[0], -1).bool()
    quota = torch.tensor([topk_count(int(c), k) for c in counted.sum(dim=1).tolist()], device=s.device).unsqueeze(1)
    take = torch.arange(s.shape[1], device=s.device).unsqueeze(0) < quota
    selected = torch.zeros_like(alive).scatter_(1, order, take)
    return layout.restore(selected.reshape(units_shape), saliency.shape)


def select_topk_global(
    saliency: Mapping[str, torch.Tensor], surviving: Mapping[str, torch.Tensor], k: float
) -> dict[str, torch.Tensor]:
    """Top ``ceil(k |S|)`` over all matrices together, ties by (matrix order, flat index).

    Finds the threshold by a binary search over the float bit patterns (monotone for s >= 0),
    one matrix at a time: no concatenated or masked copy of the saliencies is made. `surviving`
    may be a lazy mapping that unpacks one mask per lookup.
    """
    names = list(saliency)
    for n in names:
        _check_saliency(saliency[n])
    bits = {n: saliency[n].float().contiguous().view(torch.int32) for n in names}  # no copy for fp32

    def count(b: int, strict: bool = False) -> int:
        return sum(int(((bits[n] > b) if strict else (bits[n] >= b)).logical_and_(surviving[n]).sum()) for n in names)

    quota = topk_count(sum(int(surviving[n].sum()) for n in names), k)
    lo, hi = 0, 0x7F800000  # count(lo) >= quota: every saliency is >= +0.0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(mid) >= quota:
            lo = mid
        else:
            hi = mid - 1
    out, remaining = {}, quota - count(lo, strict=True)
    for n in names:
        alive = surviving[n]
        sel = (bits[n] > lo).logical_and_(alive)
        ties = (bits[n] == lo).logical_and_(alive).reshape(-1)
        if remaining > 0 and ties.any():
            idx = ties.nonzero().squeeze(1)[:remaining]
            sel.view(-1)[idx] = True
            remaining -= idx.numel()
        out[n] = sel
    return out


def select_mass(
    saliency: torch.Tensor, surviving: torch.Tensor, mass: float, scope: str = "matrix", layout: Layout = PLAIN
) -> torch.Tensor:
    """Adaptive ``k``: per unit (a matrix, or an output row), the smallest set of surviving entries whose saliency
    sum reaches ``mass`` times the unit's surviving saliency sum; entries in the order of `select_topk`
    (``(-s, flat index)``), so a set of ``n`` entries is the top ``n``.

    The count per unit then follows the saliency distribution: a few entries where the saliency is concentrated,
    many where it is spread (the paper names an adaptive ``k`` as an open question; the cumulative-mass rule is the
    project's choice, in the spirit of nucleus (top-p) selection). A unit with zero saliency selects nothing.
    Sums are float64.
    """
    if scope not in ("matrix", "row"):
        raise ValueError(f"select_mass handles scope 'matrix' or 'row', got {scope!r}")
    if not 0 < mass <= 1:
        raise ValueError(f"sau_topk_mass must be in (0, 1], got {mass}")
    s, alive, units_shape = _selection_rows(saliency, surviving, scope, layout)
    s = s.double()
    values = torch.where(alive, s, torch.zeros_like(s))
    order = _stable_desc_order(torch.where(alive, s, torch.full_like(s, -math.inf)))
    cum = torch.cumsum(values.gather(1, order), dim=1)
    target = cum[:, -1:] * mass
    # entries before the first position whose cumulative sum reaches the target, plus that one
    quota = (cum < target).sum(dim=1, keepdim=True) + (target[:, 0:1] > 0).long()
    take = torch.arange(s.shape[1], device=s.device).unsqueeze(0) < quota
    selected = torch.zeros_like(alive).scatter_(1, order, take)
    return layout.restore(selected.reshape(units_shape), saliency.shape)


def retain_aware_score(forget: torch.Tensor, retain: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """Selection score of retain-aware saliency: ``s_f / (s_r + eps * mean(s_r))`` per entry (fp32 result).

    Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining
    Through Selective Synaptic Dampening", AAAI 2024) picks the parameters whose diagonal Fisher on the forget
    set is large relative to their Fisher on the retained data; selecting by that ratio trains the weights that
    matter to the forget set and not to the retain set. `eps` (relative to the matrix's mean retain saliency,
    so the score does not change when both saliencies are rescaled) keeps entries with a near-zero retain
    saliency from dominating on a near-zero forget saliency. Computed in float64.
    """
    _check_saliency(forget)
    _check_saliency(retain)
    if eps <= 0:
        raise ValueError(f"saliency_retain_eps must be > 0, got {eps}")
    r = retain.double()
    floor = eps * r.mean()
    if not floor > 0:  # an all-zero retain saliency: the score is the forget saliency
        floor = torch.ones((), dtype=torch.float64, device=r.device)
    return (forget.double() / (r + floor)).float()


def _check_saliency(s: torch.Tensor) -> None:
    if not torch.isfinite(s).all():
        raise ValueError("The saliency contains NaN or inf: the forget loss diverged in the saliency pass.")


def redistribution_weights(
    saliency: torch.Tensor, surviving: torch.Tensor, selected: torch.Tensor, alpha: float, mode: str = "matrix",
    layout: Layout = PLAIN, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """``W`` for one parameter, computed per unit (a matrix, or each expert of a fused expert tensor).

    A matrix gets a 0-d tensor (matrix), ``[rows, 1]`` (row) or a full tensor (param); a fused expert tensor
    gets ``[experts, 1, 1]`` (matrix), one factor per output row broadcastable against its storage (row), or a
    full tensor (param); ``none`` gives None. `reduce` (sharded parameters, `sau_trainer.shards`) sums the
    per-unit sums ``I_P``, ``I_G`` and ``|G|`` over the ranks that hold parts of the unit, in place.
    """
    if mode not in REDISTRIBUTIONS:
        raise ValueError(f"sau_redistribution must be one of {REDISTRIBUTIONS}, got {mode!r}")
    if mode == "none":
        return None
    s = layout.units(saliency).double()
    pruned, sel = ~layout.units(surviving).bool(), layout.units(selected).bool()
    dims = (2,) if mode == "row" else (1, 2)
    i_p, i_g = (s * pruned).sum(dims, keepdim=True), (s * sel).sum(dims, keepdim=True)
    n_g = sel.sum(dims, keepdim=True)
    if reduce is not None:
        i_p, i_g, n_g = reduce(torch.stack([i_p, i_g, n_g.double()])).unbind(0)
    ratio = torch.where(i_g > 0, i_p / i_g.clamp_min(1e-300), torch.zeros_like(i_g))
    if mode in ("matrix", "row"):
        return layout.restore_broadcast((1.0 + alpha * ratio).float(), saliency.dim())
    mean_g = i_g / n_g.clamp_min(1)
    rel = torch.clamp(s / mean_g.clamp_min(1e-300), max=PARAM_W_CAP)
    w = torch.where(sel & (i_g > 0), 1.0 + alpha * ratio * rel, torch.ones_like(s))
    return layout.restore(w.float(), saliency.shape)


def pruned_selected_ratio(saliency: torch.Tensor, surviving: torch.Tensor, selected: torch.Tensor) -> float:
    """``I_P / I_G`` for one matrix (0 where nothing salient is selected)."""
    s = saliency.double()
    i_g = float((s * selected.bool()).sum())
    return float((s * ~surviving.bool()).sum()) / i_g if i_g > 0 else 0.0


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
        from safetensors.torch import save_file

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
        from safetensors import safe_open

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
) -> SAUState:
    """Select ``G`` and compute ``W`` for every parameter in `saliency` (same keys as `surviving`).

    With ``scope="global"`` the pool is `global_names` (default: all); other parameters (dense ones
    selected with ``sau_dense_params="topk"``) are selected per matrix. `surviving` may be lazy. `layouts`
    names the fused expert tensors, whose experts are selected and weighted one by one (default: plain
    matrices).

    Options (each off by default, then the result is the one described above): `score` selects by another
    value than the saliency (retain-aware saliency, `retain_aware_score`; ``W`` still comes from the
    saliency); `mass` selects per unit by `select_mass` instead of ``k``; `candidates` (masks) selects among
    these entries instead of the surviving ones, ``ceil(k |S|)`` of them per unit (the moving mask:
    `sau_trainer.moving_mask`).
    """
    if scope not in SCOPES:
        raise ValueError(f"sau_topk_scope must be one of {SCOPES}, got {scope!r}")
    if scope == "global" and (mass is not None or candidates is not None):
        raise ValueError("sau_topk_scope='global' does not combine with sau_topk_mass or sau_moving_mask: "
                         "use sau_topk_scope='matrix' or 'row'.")
    score = saliency if score is None else score
    selected: dict[str, torch.Tensor] = {}
    if scope == "global":
        pool = list(saliency) if global_names is None else list(global_names)
        selected = select_topk_global({n: score[n] for n in pool}, surviving, k)
        selected = {n: pack_bool(g) for n, g in selected.items()}
    state = SAUState(selected={}, shapes={}, settings=dict(settings or {}), packing="planes")
    for n, s in saliency.items():
        m = surviving[n]
        layout = (layouts or {}).get(n, PLAIN)
        unit_scope = "row" if scope == "row" else "matrix"
        if n in selected:
            g = unpack_bool(selected[n], s.shape)
        else:
            pool_n = m if candidates is None else candidates[n]
            g = (select_topk(score[n], pool_n, k, unit_scope, layout, budget=None if candidates is None else m)
                 if mass is None else select_mass(score[n], pool_n, mass, unit_scope, layout))
        w = redistribution_weights(s, m, g, alpha, redistribution, layout)
        state.selected[n] = pack_planes(g)
        state.shapes[n] = tuple(s.shape)
        if w is not None:
            state.weights[n] = w
        n_alive = int(m.sum())
        state.stats[n] = {
            "selected": int(g.sum()),
            "surviving": n_alive,
            "selected_fraction": int(g.sum()) / max(n_alive, 1),
            "pruned_over_selected": pruned_selected_ratio(s, m, g),
            "w_min": _selected_range(w, g, min),
            "w_max": _selected_range(w, g, max),
        }
    return state


def _selected_range(w: torch.Tensor | None, g: torch.Tensor, fn) -> float:
    """Min or max of ``W`` over the selected entries (a per-entry ``W`` is 1 elsewhere)."""
    if w is None:
        return 1.0
    if w.shape == g.shape:
        w = w[g]
    return float(fn(w.min(), w.max())) if w.numel() else 1.0


@torch.no_grad()
def apply_sau_(grad: torch.Tensor, selected: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """In place: ``grad * G * W`` (W broadcast as a scalar, per row, or per entry); +0.0 outside G.

    `W` keeps its fp32 values: the product is computed in fp32 and rounded once to the gradient's dtype
    (casting ``W`` to bf16 first would round 1.12 to 1.117, and copy a per-entry ``W``). The zeros are written
    last, so they are exact whatever the gradient and `W` hold there (``nan * 0`` is NaN).
    """
    if weight is not None:
        grad.mul_(weight.to(grad.device))
    grad.masked_fill_(~selected, 0.0)
    return grad
