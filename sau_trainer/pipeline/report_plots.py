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
    from .report_verdicts import start_reference

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


# ----------------------------------------------------------------------------------------- robustness.png
def then_prune_means(rows: list[dict], spec=None, band: Sequence[float] | None = None) -> list[dict]:
    """Per dense method and pruning: the second forget metric (TOFU: forget ROUGE) of the unlearned dense runs, the
    same runs pruned afterwards, and the same objective run on the pruned model (prune-then-unlearn, None where
    the grid has no such run). Without `band`: means over all the runs (learning rates and seeds). With `band`
    (fractions of the finetuned model's utility): only the dense runs whose utility lies in it (`in_band`), each
    seed's runs averaged first, then the mean over seeds, with ``<key>_sd`` (one s.d. over seeds) and ``seeds``."""
    from ..data.benchmarks import TOFU_REPORT
    from .report import method_label

    spec = spec or TOFU_REPORT
    m1 = spec.forget[1]
    runs = [r for r in rows if not r["reference"]]
    by_name = {r["name"]: r for r in runs}
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if not r.get("unlearn_then_prune"):
            continue
        dense_name, pid = r["name"].rsplit("+", 1)
        dense, sparse = by_name.get(dense_name), by_name.get(f"{pid}-{dense_name.split('-', 1)[1]}")
        values = [x and x["metrics"].get(m1.key) for x in (dense, r, sparse)]
        if None in values[:2] or (band is not None and not in_band(rows, dense, spec.utility, band)):
            continue
        g = groups[(method_label(dense), f"{r['pruning']} {r['target_sparsity']:.0%}")]
        for k, v in zip(("dense", "then_pruned", "pruned_first"), values, strict=True):
            g[k].append((int(dense["seed"]), v))
    out = []
    for (m, p), g in groups.items():
        entry = {"method": m, "pruning": p, "runs": len(g["dense"]), "seeds": len({s for s, _ in g["dense"]})}
        for k in ("dense", "then_pruned", "pruned_first"):
            if band is None:
                vals = [v for _, v in g[k] if v is not None]
                entry[k], entry[f"{k}_sd"] = (sum(vals) / len(vals) if vals else None), 0.0
            else:
                entry[k], entry[f"{k}_sd"], _ = seed_mean_sd(g[k])
        out.append(entry)
    return out


def _without(rows: list[dict], attacks: set[str]) -> list[dict]:
    """`rows` with these attacks left out of every row's ``robustness``."""
    return [{**r, "robustness": {a: v for a, v in r["robustness"].items() if a not in attacks}}
            if r.get("robustness") else r for r in rows]


def plot_robustness_figure(rows: list[dict], path, spec=None, band: Sequence[float] | float | None = None) -> bool:
    """robustness.png: the unlearn-then-prune check and the attacks of evaluate.robustness, as bars of the second
    forget metric at matched utility: only the runs inside the utility band `band` (fractions of each run's start
    model's utility; default `frontier.DEFAULT_BAND`), mean over seeds with bars of one s.d. over seeds. Returns
    False (no file written) when the run has neither."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..data.benchmarks import TOFU_REPORT
    from .frontier import DEFAULT_BAND
    from .report import _save
    from .robustness import plot_robustness, robustness_table

    spec = spec or TOFU_REPORT
    band = DEFAULT_BAND if band is None else (band, band) if isinstance(band, int | float) else tuple(band)
    has_then_prune = bool(then_prune_means(rows, spec))
    tp = then_prune_means(rows, spec, band)
    # the unlearn-then-prune rows are prune attacks of their dense runs too: drawn once, in the first panel
    then_prune_attacks = {"prune-" + r["name"].rsplit("+", 1)[1] for r in rows if r.get("unlearn_then_prune")}
    attacked = any(not t["skipped"] for t in robustness_table(_without(rows, then_prune_attacks), spec))
    if not has_then_prune and not attacked:
        return False
    n = int(has_then_prune) + int(attacked)
    fig, axes = plt.subplots(n, 1, figsize=(12, 5 * n), squeeze=False)
    m1 = spec.forget[1]
    lo, hi = band
    where = f"{lo:.0%} to {hi:.0%}" if hi > lo else f"at {lo:.0%}"
    if has_then_prune:
        ax = axes[0][0]
        x = np.arange(len(tp))
        for j, (key, label, colour) in enumerate((("dense", "unlearned dense", "0.55"),
                                                  ("then_pruned", "unlearned dense, then pruned", "tab:red"),
                                                  ("pruned_first", "pruned first, then unlearned", "tab:blue"))
                                                 if tp else ()):
            ax.bar(x - 0.27 + 0.27 * j, [math.nan if t[key] is None else t[key] for t in tp], 0.27, color=colour,
                   yerr=[t[f"{key}_sd"] or 0.0 for t in tp], capsize=2, error_kw={"elinewidth": 0.8}, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{t['method']}\nthen {t['pruning']} ({t['runs']} runs in the band, {t['seeds']} seeds)"
                            for t in tp], fontsize=7)
        if not tp:
            ax.text(0.5, 0.5, "no dense run with utility in the band", ha="center", transform=ax.transAxes)
        ax.set_ylabel(f"{m1.label} ({'lower' if m1.better == 'min' else 'higher'} = more forgotten)")
        ax.set_title(f"Unlearn, then prune: does the forgotten data come back? (dense runs with utility {where} of "
                     "the finetuned model's;\nmean over seeds, error bars: ±1 s.d. over seeds)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if tp:
            ax.legend(fontsize=8, frameon=False)
    if attacked:
        plot_robustness(axes[-1][0], _without(rows, then_prune_attacks), spec, band)
    fig.tight_layout()
    _save(fig, path)
    return True


__all__ = ["in_band", "mean_frontier", "panel_band", "plot_robustness_figure", "seed_mean_sd", "start_utility",
           "then_prune_means"]
