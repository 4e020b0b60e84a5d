"""What the report's plots mark so they show what the verdicts read: the frontiers over the utility band on
tradeoff.png, and the runs at matched utility on robustness.png (SPEC section 7).

Why. The verdicts (`report_verdicts.band_comparisons`) read each method's frontier over a utility band, per seed;
a plot that shows only mean curves over learning rates leaves a reader guessing which points decided. And an
attack's effect averaged over every learning rate mixes runs that barely unlearned with runs that broke the model,
so two methods are compared at different utilities. So:

- `mean_frontier`: a method's frontier (its best forget metric over its points with utility >= u) as a function of
  u across the band, averaged over its seeds: the line the verdict integrates. Drawn on tradeoff.png as a thick
  step line inside the shaded band, per method.
- `in_band`: whether a run's final utility lies inside the band of its own starting model's utility (the finetuned
  model for a dense run, the same pruned model for a sparse one): the runs robustness.png compares, with error bars
  over seeds (`seed_mean_sd`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from .frontier import frontier, row_points

N_SAMPLES = 201  # utilities sampled across the band (the frontier is a step function; this resolves its steps)


def panel_band(comparisons: Sequence[Mapping] | None, pruning, sparsity) -> tuple[float, float, bool] | None:
    """The absolute utility band the comparisons read on the panel of this pruning (SAU against plain there first,
    else the sparsity penalty on the pruned side) and whether they used the trajectory points only; None when no
    comparison of the panel has a band."""
    cands = [c for c in comparisons or () if c.get("pruning") == pruning and c.get("target_sparsity") == sparsity
             and (c.get("band") or {}).get("utility")]
    cands.sort(key=lambda c: c.get("a") != "sau")
    if not cands:
        return None
    lo, hi = cands[0]["band"]["utility"]
    return float(lo), float(hi), cands[0].get("points") == "trajectories"


def mean_frontier(rows: Iterable[Mapping], *, metric: str, utility: str, log: bool, better: str, lo: float,
                  hi: float, trajectories_only: bool = False, n: int = N_SAMPLES) -> tuple[list[float], list[float]]:
    """``(utilities, values)``: the mean over seeds of a method's frontier at `n` utilities from `lo` to `hi`
    (`rows`: one method's runs). A utility where some seed's frontier is undefined (no point that high) is left
    out, as the comparisons leave such a seed out. `trajectories_only`: the frontier from the trajectory
    evaluations alone, as the comparisons read it when every run has a trajectory."""
    by_seed: dict[int, list] = defaultdict(list)
    for r in rows:
        src = {**r, "metrics": {}} if trajectories_only else r
        by_seed[int(r["seed"])].extend(row_points(src, metric=metric, utility=utility, log=log))
    us = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if hi > lo else [lo]
    out_u, out_v = [], []
    for u in us:
        vals = [frontier(pts, u, better) for pts in by_seed.values()]
        if vals and None not in vals:
            out_u.append(u)
            out_v.append(sum(vals) / len(vals))
    return out_u, out_v


def start_utility(rows: Sequence[Mapping], run: Mapping, utility: str) -> float | None:
    """The utility of the model `run` started from (its reference row), None without one."""
    from .report_format import start_reference

    ref = start_reference(rows, run)
    v = None if ref is None else ref["metrics"].get(utility)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def in_band(rows: Sequence[Mapping], run: Mapping, utility: str, band: Sequence[float]) -> bool:
    """Whether `run`'s final utility lies in ``[lo, hi]`` times its starting model's utility."""
    u0 = start_utility(rows, run, utility)
    u = run.get("metrics", {}).get(utility)
    if u0 is None or not isinstance(u, int | float):
        return False
    return band[0] * u0 <= u <= band[1] * u0


def seed_mean_sd(pairs: Iterable[tuple[int, float | None]]) -> tuple[float | None, float, int]:
    """``(mean, sd, seeds)`` over seeds of ``(seed, value)`` pairs: each seed's values averaged first (a seed with
    several learning rates in the band counts once), then the mean and sample standard deviation over seeds."""
    per: dict[int, list[float]] = defaultdict(list)
    for seed, v in pairs:
        if v is not None:
            per[seed].append(float(v))
    means = [sum(v) / len(v) for v in per.values()]
    if not means:
        return None, 0.0, 0
    m = sum(means) / len(means)
    sd = math.sqrt(sum((x - m) ** 2 for x in means) / (len(means) - 1)) if len(means) > 1 else 0.0
    return m, sd, len(means)


__all__ = ["in_band", "mean_frontier", "panel_band", "seed_mean_sd", "start_utility"]
