"""Methods compared on frontiers over a utility band, with a sensitivity check (SPEC section 7, revised).

Why not the crossing point. `comparisons.compare` reads each seed's curve once, where its utility first falls to
one floor, interpolating between two neighbouring learning rates. That single point depends on where the grid
puts its rates: adding or dropping a rate flipped a verdict from `better` to `worse`, moving the floor from 0.85 to
0.92 of the start moved the difference from +0.002 to +0.293, and a curve whose smallest rate was already below
the floor lost its value although larger rates were above it (utility is not monotone in the rate).

What is compared here.
- **Points.** A run contributes every evaluation it made: its trajectory (``row["trajectory"]``, a list of
  evaluations with a ``step``) and its final ``metrics``. A method x seed pools the points of all its learning
  rates. Each point is ``(learning_rate, step, utility, value)``, `value` the forget metric on the comparison's
  scale (log10 for forget quality, 0 read as ``FQ_LOG_FLOOR``, as `comparisons.metric_value` does). Points whose
  utility or value is missing or not finite are left out. A trajectory that starts with the starting model's
  evaluation (step 0) makes every frontier reach the band, whose top is below the start.
- **Frontier.** ``frontier(u)`` is the best value (the highest for a metric whose `better` is ``"max"``, the
  lowest for ``"min"``) over the points with utility >= `u`: the most forgetting the method reached while keeping
  at least `u`. It is a step function of `u` that only gets worse as `u` rises, and it is undefined above the
  method's best utility. Adding runs never worsens it nor takes a value away.
- **Band.** The band is ``[lo, hi] x start utility``, the start being the comparison's own starting model
  (the pruned model for SAU against plain); the default is ``DEFAULT_BAND = (0.85, 0.95)``. Each side's value for a
  seed is the *exact* mean of its frontier over the band: the frontier is constant between consecutive utilities of
  its points, so the integral is a finite sum (no grid of floors, nothing interpolated). The mean of the difference
  ``a - b`` over the band is the difference of the two means. A band of width 0 (``lo == hi``, what the former
  ``report.utility_fraction`` means) reads both frontiers at that one floor; the output says ``width_zero``.
- **Coverage.** A seed counts only when both sides' frontiers cover the whole band (each has a point with utility
  >= the band's top). Otherwise the seed is dropped and its ``per_seed`` entry says why (``dropped``): averaging
  over the part a side covers would average different seeds over different utilities.
- **Interval and verdict.** As `comparisons.compare`: the paired differences over the seeds with both values get a
  95% Student t interval (`comparisons.t_interval`), and the verdict (`comparisons.verdict`) is ``better`` /
  ``worse`` / ``inconclusive`` (the interval contains 0, or fewer than ``MIN_SEEDS`` = 3 paired seeds).
  ``a_mean`` and ``b_mean`` are over the paired seeds, so ``a_mean - b_mean == diff_mean``.
- **Sensitivity.** The comparison is recomputed at ``n_floors`` single floors spread evenly over the band (default
  5, ends included: 2.5% of the start apart for the default band, fine enough to see the cliff between 0.85 and
  0.92 that the crossing rule had, few enough to print) and over the whole band with each learning rate left out
  of both sides (the same grid for both: equal effort). A recomputation *flips* when the verdict is decisive and
  the recomputation's verdict is the opposite one or its mean difference has the opposite sign; when the verdict is
  inconclusive, the decisive recomputations flip when both ``better`` and ``worse`` occur among them. Any flip makes
  the comparison ``fragile``. A width-0 band has no floor recomputations; one learning rate has no leave-one-out.

The functions are pure (no I/O, no Trainer) and work on report rows (dicts with ``learning_rate``, ``seed``,
``metrics`` and optionally ``trajectory``, as report.json's ``runs``). What a metric's steps are, and whether an
effect is smaller than one, is in `resolution`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .comparisons import MIN_SEEDS, Selector, _matches, metric_value, t_interval, verdict

DEFAULT_BAND = (0.85, 0.95)
N_FLOORS = 5
BAND_MEAN = "exact mean of the step-function frontiers over the band"


class Point(NamedTuple):
    """One evaluation of one run: its learning rate, training step (None: the run's final evaluation), utility and
    forget metric (on the comparison's scale)."""

    learning_rate: float | None
    step: int | None
    utility: float
    value: float


# ----------------------------------------------------------------------------------------- points
def _finite(x) -> bool:
    return x is not None and math.isfinite(float(x))


def row_points(row: Mapping, *, metric: str, utility: str = "model_utility", log: bool = False) -> list[Point]:
    """The points a report row contributes: each trajectory evaluation and the final ``metrics``.

    A trajectory entry is either flat (``{"step": 10, "model_utility": ..., "forget_quality": ...}``) or nests its
    metrics (``{"step": 10, "metrics": {...}}``). Evaluations without a finite utility or value are left out.
    """
    evaluations = [(e.get("step"), e["metrics"] if isinstance(e.get("metrics"), Mapping) else e)
                   for e in row.get("trajectory") or ()]
    evaluations.append((None, row.get("metrics") or {}))
    out = []
    for step, m in evaluations:
        u, v = m.get(utility), metric_value(m, metric, log)
        if _finite(u) and _finite(v):
            out.append(Point(row.get("learning_rate"), step, float(u), float(v)))
    return out


def seed_points(rows: Iterable[Mapping], select: Selector, *, metric: str, utility: str = "model_utility",
                log: bool = False) -> dict[int, list[Point]]:
    """Per seed: the pooled points of the selected rows (one method: its runs differ only in learning rate and seed).

    Raises ValueError when the selector matches two runs with one seed and learning rate: pooling two methods
    would give one side the best of both.
    """
    match = _matches(select)
    by_seed: dict[int, list[Point]] = defaultdict(list)
    lrs: dict[int, list] = defaultdict(list)
    for r in rows:
        if match(r):
            seed = int(r["seed"])
            lrs[seed].append(r.get("learning_rate"))
            by_seed[seed].extend(row_points(r, metric=metric, utility=utility, log=log))
    for seed, rates in lrs.items():
        if len(set(rates)) != len(rates):
            raise ValueError(f"seed {seed}: the selector matched several runs with one learning rate "
                             f"({sorted(rates, key=str)}); select one method (its runs differ only in learning rate "
                             "and seed)")
    return {seed: by_seed[seed] for seed in sorted(lrs)}


# ----------------------------------------------------------------------------------------- one frontier
def _best(values: Iterable[float], better: str) -> float:
    return max(values) if better == "max" else min(values)


def frontier(points: Iterable[Point], u: float, better: str = "max") -> float | None:
    """The best value over the points with utility >= `u` (`better`: ``"max"`` or ``"min"``); None if none."""
    vals = [p.value for p in points if p.utility >= u]
    return _best(vals, better) if vals else None


def frontier_steps(points: Iterable[Point], better: str = "max") -> list[tuple[float, float]]:
    """The frontier as a step function: ``[(u_1, f_1), (u_2, f_2), ...]`` with ``u_1 > u_2 > ...`` the distinct
    utilities of the points; ``frontier(u) = f_k`` for ``u`` in ``(u_{k+1}, u_k]`` (``u_{K+1} = -inf``) and None
    above ``u_1``."""
    by_u: dict[float, list[float]] = defaultdict(list)
    for p in points:
        by_u[p.utility].append(p.value)
    steps, best = [], None
    for u in sorted(by_u, reverse=True):
        here = _best(by_u[u], better)
        best = here if best is None else _best((best, here), better)
        steps.append((u, best))
    return steps


def band_mean(points: Iterable[Point], lo: float, hi: float, better: str = "max") -> float | None:
    """The exact mean of the frontier over utilities ``[lo, hi]`` (absolute utilities, ``lo <= hi``); the frontier at
    `lo` when ``lo == hi``. None when the frontier does not cover the band (no point with utility >= `hi`)."""
    if not lo <= hi:
        raise ValueError(f"the band's bottom {lo} is above its top {hi}")
    points = list(points)  # read twice below
    steps = frontier_steps(points, better)
    if not steps or steps[0][0] < hi:
        return None
    if lo == hi:
        return frontier(points, lo, better)
    total = 0.0
    for k, (u_top, f) in enumerate(steps):
        u_next = steps[k + 1][0] if k + 1 < len(steps) else -math.inf
        length = min(u_top, hi) - max(u_next, lo)  # the frontier is f on (u_next, u_top]
        if length > 0:
            total += length * f
    return total / (hi - lo)


# ----------------------------------------------------------------------------------------- two methods
def _coverage_reason(side: str, pts: list[Point] | None, hi: float) -> str | None:
    if pts is None:
        return f"{side} has no run with this seed"
    if not pts:
        return f"{side} has no evaluation with both the utility and the metric"
    top = max(p.utility for p in pts)
    return None if top >= hi else (f"{side} never keeps utility >= {hi:.4g} (the band's top; its best is {top:.4g}), "
                                   "so its frontier does not cover the band")


def compare_points(a: Mapping[int, list[Point]], b: Mapping[int, list[Point]], lo: float, hi: float, *,
                   better: str = "max", min_seeds: int = MIN_SEEDS) -> dict:
    """Seed-paired comparison of two methods' frontiers over the absolute utility band ``[lo, hi]``.

    Returns ``seeds`` (seeds either side ran), ``paired_seeds``, ``a_mean`` / ``b_mean`` (band means over the
    paired seeds), ``diff_mean`` and ``ci95`` (of ``a - b``), ``verdict`` and ``per_seed`` (``seed``, ``a``, ``b``,
    ``diff``, and ``dropped``: why a seed has no difference).
    """
    seeds = sorted(set(a) | set(b))
    per_seed, paired = [], []
    for s in seeds:
        va = band_mean(a[s], lo, hi, better) if s in a else None
        vb = band_mean(b[s], lo, hi, better) if s in b else None
        entry = {"seed": s, "a": va, "b": vb, "diff": None}
        if va is not None and vb is not None:
            entry["diff"] = va - vb
            paired.append(entry)
        else:
            reasons = [r for r in (_coverage_reason("a", a.get(s), hi), _coverage_reason("b", b.get(s), hi)) if r]
            entry["dropped"] = "; ".join(reasons)
        per_seed.append(entry)
    diff_mean, ci = t_interval([e["diff"] for e in paired])
    n = len(paired)
    return {"seeds": len(seeds), "paired_seeds": n,
            "a_mean": sum(e["a"] for e in paired) / n if n else None,
            "b_mean": sum(e["b"] for e in paired) / n if n else None,
            "diff_mean": diff_mean, "ci95": ci, "verdict": verdict(ci, n, better, min_seeds), "per_seed": per_seed}


def _without_lr(points: Mapping[int, list[Point]], lr) -> dict[int, list[Point]]:
    return {s: [p for p in pts if p.learning_rate != lr] for s, pts in points.items()}


def _flips(main: dict, other: dict) -> bool:
    if main["verdict"] == "inconclusive":
        return False
    if other["verdict"] not in ("inconclusive", main["verdict"]):
        return True
    d0, d1 = main["diff_mean"], other["diff_mean"]
    return d1 is not None and d0 * d1 < 0


def sensitivity(a: Mapping[int, list[Point]], b: Mapping[int, list[Point]], lo: float, hi: float, main: dict, *,
                start_utility: float, better: str = "max", min_seeds: int = MIN_SEEDS,
                n_floors: int = N_FLOORS) -> tuple[bool, list[dict]]:
    """``(fragile, recomputations)``: the comparison `main` (from `compare_points` over ``[lo, hi]``) recomputed at
    `n_floors` single floors spread evenly over the band and over the band with each learning rate left out of both
    sides. Each recomputation: ``kind`` (``"floor"`` with ``floor_fraction`` and ``utility_floor``, or
    ``"without_lr"`` with ``learning_rate``), ``paired_seeds``, ``diff_mean``, ``ci95``, ``verdict`` and ``flips``
    (the module docstring says when a recomputation flips)."""
    out = []
    if hi > lo:
        if n_floors < 2:
            raise ValueError(f"n_floors={n_floors}: a band of nonzero width needs at least 2 floors (its two ends)")
        for i in range(n_floors):
            floor = lo + (hi - lo) * i / (n_floors - 1)
            res = compare_points(a, b, floor, floor, better=better, min_seeds=min_seeds)
            out.append({"kind": "floor", "floor_fraction": floor / start_utility, "utility_floor": floor, **_brief(res)})
    lrs = sorted({p.learning_rate for side in (a, b) for pts in side.values() for p in pts}, key=lambda x: (x is None, x))
    if len(lrs) > 1:
        for lr in lrs:
            res = compare_points(_without_lr(a, lr), _without_lr(b, lr), lo, hi, better=better, min_seeds=min_seeds)
            out.append({"kind": "without_lr", "learning_rate": lr, **_brief(res)})
    if main["verdict"] != "inconclusive":
        for e in out:
            e["flips"] = _flips(main, e)
    else:
        decisive = {e["verdict"] for e in out} - {"inconclusive"}
        for e in out:
            e["flips"] = len(decisive) == 2 and e["verdict"] != "inconclusive"
    return any(e["flips"] for e in out), out


def _brief(res: dict) -> dict:
    return {k: res[k] for k in ("paired_seeds", "diff_mean", "ci95", "verdict")}


def band_utilities(start_utility: float, band: Sequence[float] = DEFAULT_BAND) -> tuple[float, float]:
    """The band ``(lo, hi)`` in absolute utility: its fractions times the starting model's utility.

    Raises ValueError (what is wrong and what to give instead) for a band that is not two fractions
    ``0 <= lo <= hi`` or a starting utility that is not a positive number.
    """
    if len(band) != 2 or not all(_finite(x) for x in band) or not 0 <= band[0] <= band[1]:
        raise ValueError(f"utility band {list(band)}: give two fractions of the starting model's utility, "
                         "[lo, hi] with 0 <= lo <= hi (e.g. [0.85, 0.95]; [0.9, 0.9] for one floor)")
    if not _finite(start_utility) or start_utility <= 0:
        raise ValueError(f"starting utility {start_utility}: the band needs the starting model's utility, a positive "
                         "number (evaluate the starting model first)")
    return band[0] * start_utility, band[1] * start_utility


def compare_band(rows: Iterable[Mapping], a: Selector, b: Selector, *, metric: str, start_utility: float,
                 band: Sequence[float] = DEFAULT_BAND, utility: str = "model_utility", better: str = "max",
                 log: bool = False, min_seeds: int = MIN_SEEDS, n_floors: int = N_FLOORS) -> dict:
    """Method `a` against method `b` on their frontiers over a utility band, paired by seed (SPEC section 7).

    `a` and `b` select rows as in `comparisons.compare`; `metric` is a forget metric key (log10 with `log`),
    `better` its direction; `band` is two fractions of `start_utility` (the comparison's own starting model).
    Returns `compare_points`' keys plus ``band`` (``fractions``, ``start_utility``, ``utility`` (absolute),
    ``width_zero``, ``mean``: how the band mean is taken), ``fragile`` and ``sensitivity`` (see `sensitivity`).
    """
    lo, hi = band_utilities(start_utility, band)
    rows = list(rows)
    pa = seed_points(rows, a, metric=metric, utility=utility, log=log)
    pb = seed_points(rows, b, metric=metric, utility=utility, log=log)
    res = compare_points(pa, pb, lo, hi, better=better, min_seeds=min_seeds)
    fragile, checks = sensitivity(pa, pb, lo, hi, res, start_utility=start_utility, better=better,
                                  min_seeds=min_seeds, n_floors=n_floors)
    res["band"] = {"fractions": [float(band[0]), float(band[1])], "start_utility": float(start_utility),
                   "utility": [lo, hi], "width_zero": lo == hi,
                   "mean": "frontiers read at one floor" if lo == hi else BAND_MEAN}
    res["fragile"] = fragile
    res["sensitivity"] = checks
    return res


__all__ = ["BAND_MEAN", "DEFAULT_BAND", "N_FLOORS", "Point", "band_mean", "band_utilities", "compare_band",
           "compare_points", "frontier", "frontier_steps", "row_points", "seed_points", "sensitivity"]
