"""Sparsity-Aware Unlearning's selection and redistribution: pure tensor functions (no Trainer, no files, no
collective calls).

Definitions (SPEC section 2, the project's own reading of Sparsity-Aware Unlearning, arXiv 2602.00577):

* selection ``G``: among the surviving entries ``S`` of a unit (a matrix, an output row, or all
  prunable matrices), the top ``ceil(k * |S|)`` by saliency ``s``; ties broken by a stable sort on
  ``(-s, flat index)``. ``k`` is read as the decimal it is written as (0.3 * 10 selects 3, not 4).
* redistribution ``W``: with ``I_P`` the saliency summed over pruned entries and ``I_G`` over selected
  ones, per matrix ``W = 1 + alpha * I_P / I_G``; per row the same ratio per output row; per
  parameter ``W_i = 1 + alpha * (I_P / I_G) * min(s_i / mean_G s, 10)``; ``none`` gives ``W = 1``.
  Where ``I_G = 0``, ``W = 1``.

A caller whose tensors are shards (FSDP2) passes the reductions in (`redistribution_weights`'s `reduce`,
`retain_aware_score`'s `retain_mean`); the state that puts these together is built once, for every backend, by
`sau_trainer.training.state.build_sau_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .prunable import PLAIN, Layout
from .topk import threshold_select, topk_count

SCOPES = ("matrix", "row", "global")
REDISTRIBUTIONS = ("matrix", "row", "param", "none")
PARAM_W_CAP = 10.0


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

    The exact threshold search of `sau_trainer.core.topk` on one process (the same function the sharded backends
    run with their reductions): no sorted, concatenated or masked copy of the saliencies is made. `surviving` may
    be a lazy mapping that unpacks one mask per lookup; it is looked up again on every count.
    """
    names = list(saliency)
    for n in names:
        _check_saliency(saliency[n])
    (picked,) = threshold_select([[(saliency[n], lambda n=n: surviving[n]) for n in names]], k)
    return dict(zip(names, picked, strict=True))


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


def retain_aware_score(forget: torch.Tensor, retain: torch.Tensor, eps: float = 0.01,
                       retain_mean: torch.Tensor | float | None = None) -> torch.Tensor:
    """Selection score of retain-aware saliency: ``s_f / (s_r + eps * mean(s_r))`` per entry (fp32 result).

    Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without Retraining
    Through Selective Synaptic Dampening", AAAI 2024) picks the parameters whose diagonal Fisher on the forget
    set is large relative to their Fisher on the retained data; selecting by that ratio trains the weights that
    matter to the forget set and not to the retain set. `eps` (relative to the matrix's mean retain saliency,
    so the score does not change when both saliencies are rescaled) keeps entries with a near-zero retain
    saliency from dominating on a near-zero forget saliency. Computed in float64. `retain_mean`: the mean of the
    whole matrix's retain saliency where `retain` holds only some of its rows (a shard; default ``retain.mean()``).
    """
    _check_saliency(forget)
    _check_saliency(retain)
    if eps <= 0:
        raise ValueError(f"saliency_retain_eps must be > 0, got {eps}")
    r = retain.double()
    floor = eps * (r.mean() if retain_mean is None else torch.as_tensor(retain_mean, dtype=torch.float64,
                                                                        device=r.device))
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
