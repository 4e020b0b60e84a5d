"""What a report concludes: methods compared at matched utility, with an interval over seeds (SPEC section 7).

One unlearning run is one point on a forget/utility trade-off; a method run over learning rates is a curve.
For each seed, each side's curve (its runs of that seed, sorted by learning rate) is read where its utility
first falls to the utility floor: the forget metric there is interpolated linearly between the two
neighbouring learning rates (the last one at or above the floor and the first one below it). A curve that
never reaches the floor (every point above it), or starts below it (the smallest learning rate already
breaks utility), has no value for that seed. The two sides are paired by seed: the mean paired difference
``a - b`` gets a 95% t interval over the seeds where both sides have a value, and the verdict is
``better`` (``a`` forgets more: the whole interval on the metric's better side), ``worse`` (the whole
interval on the other side) or ``inconclusive`` (the interval contains 0, or fewer than 3 paired seeds).

The functions are pure and work on any list of report rows (dicts with ``learning_rate``, ``seed`` and
``metrics``, as ``report.json``'s ``runs``): `compare` takes rows and two selectors, `report_comparisons`
makes the report's standard list (SAU against plain, sparse against dense).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Selector = Callable[[Mapping], bool] | Mapping[str, Any]
FQ_LOG_FLOOR = 1e-30  # forget quality 0 is read as 1e-30 on the log10 scale (-30)
MIN_SEEDS = 3
VERDICTS = ("better", "worse", "inconclusive")


# ----------------------------------------------------------------------------------------- one curve
def value_at_floor(points: Iterable[tuple[float, float | None, float | None]], floor: float) -> float | None:
    """The forget metric where a curve's utility first falls to `floor`.

    `points` are ``(learning_rate, utility, metric)``; they are sorted by learning rate here. The value is
    interpolated linearly between the last point at or above the floor and the first point below it
    (``t = (u_above - floor) / (u_above - u_below)``). None when the curve never reaches the floor (all
    points above it), starts below it, or a needed value is None.
    """
    pts = sorted((p for p in points if p[1] is not None), key=lambda p: p[0])
    for j, (_, u, m) in enumerate(pts):
        if u > floor:
            continue
        if j == 0:  # the smallest learning rate is already at or below the floor
            return m if u == floor else None
        _, u0, m0 = pts[j - 1]
        if m is None or m0 is None:
            return None
        t = (u0 - floor) / (u0 - u)
        return m0 + t * (m - m0)
    return None


def metric_value(metrics: Mapping, key: str, log: bool = False) -> float | None:
    """``metrics[key]``, as log10 when `log` (0 read as `FQ_LOG_FLOOR`); None stays None."""
    v = metrics.get(key)
    if v is None:
        return None
    return math.log10(max(float(v), FQ_LOG_FLOOR)) if log else float(v)


# ----------------------------------------------------------------------------------------- statistics
def t_interval(diffs: list[float], confidence: float = 0.95) -> tuple[float | None, list[float] | None]:
    """Mean and two-sided Student t interval of `diffs` (None / None without values; no interval for one)."""
    n = len(diffs)
    if n == 0:
        return None, None
    mean = sum(diffs) / n
    if n < 2:
        return mean, None
    from scipy.stats import t as student_t

    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, [mean - half, mean + half]


def verdict(ci: list[float] | None, n: int, better: str, min_seeds: int = MIN_SEEDS) -> str:
    """``better`` / ``worse`` / ``inconclusive`` from the interval of ``a - b`` and the paired seed count.

    `better` is the metric's direction: ``"max"`` (higher is more forgetting) or ``"min"``.
    """
    if ci is None or n < min_seeds or ci[0] <= 0 <= ci[1]:
        return "inconclusive"
    above = ci[0] > 0
    return "better" if above == (better == "max") else "worse"


# ----------------------------------------------------------------------------------------- two sides
def _matches(select: Selector) -> Callable[[Mapping], bool]:
    if callable(select):
        return select
    return lambda row: all(row.get(k) == v for k, v in select.items())


def seed_values(rows: Iterable[Mapping], select: Selector, *, metric: str, floor: float,
                utility: str = "model_utility", log: bool = False) -> dict[int, float | None]:
    """Per seed: the value at the floor of the curve made by the selected rows of that seed."""
    match = _matches(select)
    by_seed: dict[int, list[tuple]] = defaultdict(list)
    for r in rows:
        if match(r):
            by_seed[int(r["seed"])].append((r["learning_rate"], r["metrics"].get(utility),
                                            metric_value(r["metrics"], metric, log)))
    for seed, pts in by_seed.items():
        lrs = [p[0] for p in pts]
        if len(set(lrs)) != len(lrs):
            raise ValueError(f"seed {seed}: the selector matched several runs with one learning rate ({sorted(lrs)}); "
                             "select one method (its runs differ only in learning rate and seed)")
    return {seed: value_at_floor(pts, floor) for seed, pts in sorted(by_seed.items())}


def compare(rows: Iterable[Mapping], a: Selector, b: Selector, *, metric: str, floor: float,
            utility: str = "model_utility", better: str = "max", log: bool = False,
            min_seeds: int = MIN_SEEDS) -> dict:
    """Method `a` against method `b` at matched utility (SPEC section 7).

    `a` and `b` select rows: a function of a row, or a mapping of row keys to required values (e.g.
    ``{"model": "sparse", "objective": "npo", "sau": True}``). `metric` is a key of each row's ``metrics``
    (read as log10 with `log`), `better` its direction (``"max"``: higher means more forgotten). Returns
    ``seeds`` (seeds either side ran), ``paired_seeds`` (seeds where both sides have a value), ``a_mean`` and
    ``b_mean`` (means over the seeds where that side has a value), ``diff_mean`` and ``ci95`` (of ``a - b``
    over paired seeds), ``verdict`` and ``per_seed``.
    """
    rows = list(rows)
    va = seed_values(rows, a, metric=metric, floor=floor, utility=utility, log=log)
    vb = seed_values(rows, b, metric=metric, floor=floor, utility=utility, log=log)
    seeds = sorted(set(va) | set(vb))
    paired = [s for s in seeds if va.get(s) is not None and vb.get(s) is not None]
    diffs = [va[s] - vb[s] for s in paired]
    diff_mean, ci = t_interval(diffs)

    def mean(values) -> float | None:
        vals = [v for v in values if v is not None]
        return sum(vals) / len(vals) if vals else None

    return {"seeds": len(seeds), "paired_seeds": len(paired), "a_mean": mean(va.values()), "b_mean": mean(vb.values()),
            "diff_mean": diff_mean, "ci95": ci, "verdict": verdict(ci, len(paired), better, min_seeds),
            "per_seed": [{"seed": s, "a": va.get(s), "b": vb.get(s)} for s in seeds]}


# ----------------------------------------------------------------------------------------- the report's list
def metric_name(metric) -> str:
    """The comparison's metric name: the forget metric's key, ``_log10`` added for log metrics."""
    return f"{metric.key}_log10" if metric.log else metric.key


def grid_key(grid: Mapping | None) -> tuple:
    """A hashable key of a row's extra grid axes' values (a list value, for a field that takes lists, as JSON)."""
    import json

    return tuple(sorted((k, json.dumps(v) if isinstance(v, list | dict) else v) for k, v in (grid or {}).items()))


def _grid_key(row: Mapping) -> tuple:
    return grid_key(row.get("grid"))


def comparison_pairs(rows: Iterable[Mapping]) -> list[tuple]:
    """The report's pairs of methods: per (pruning, objective, extra grid values), SAU against plain on every model
    (``"sau"``, ``"plain"``) and plain on each sparse model against plain on the dense one (``"sparse-plain"``,
    ``"dense-plain"``). Each pair is ``(pruning, target_sparsity, objective, grid key, a name, b name, a rows,
    b rows)``, sorted as the report lists them.

    Unlearning runs only: reference rows, unlearn-then-prune rows and attacked copies are left out.
    """
    runs = [r for r in rows if not r.get("reference") and not r.get("unlearn_then_prune") and not r.get("attack_of")]
    methods: dict[tuple, list] = defaultdict(list)  # (pruning, sparsity, objective, grid, sau) -> rows
    for r in runs:
        methods[(r["pruning"], r["target_sparsity"], r["objective"], _grid_key(r), bool(r["sau"]))].append(r)
    pairs = []  # (pruning, sparsity, objective, grid, a name, b name, a rows, b rows)
    for (pruning, sp, obj, grid, sau), a_rows in methods.items():
        if sau and (pruning, sp, obj, grid, False) in methods:
            pairs.append((pruning, sp, obj, grid, "sau", "plain", a_rows, methods[(pruning, sp, obj, grid, False)]))
    for (pruning, sp, obj, grid, sau), a_rows in methods.items():
        dense = methods.get((None, 0.0, obj, grid, False))
        if not sau and pruning is not None and dense:
            pairs.append((pruning, sp, obj, grid, "sparse-plain", "dense-plain", a_rows, dense))
    pairs.sort(key=lambda p: (p[0] is not None, str(p[0]), p[1], str(p[2]), p[3], p[4] != "sau"))
    return pairs


def report_comparisons(rows: Iterable[Mapping], spec, floor: float | None) -> list[dict]:
    """The report's pairs (`comparison_pairs`) read at one utility floor with `compare` (the crossing rule), for
    every forget metric of `spec` (the benchmark's `ReportSpec`); an empty list without a floor. The report itself
    now compares over a utility band (`report_verdicts.band_comparisons`); `benchmarks/study.py` and callers of
    this function keep the single-floor reading."""
    if floor is None:
        return []
    out = []
    for pruning, sp, obj, grid, a_name, b_name, a_rows, b_rows in comparison_pairs(rows):
        ids_a, ids_b = {id(r) for r in a_rows}, {id(r) for r in b_rows}
        for m in spec.forget:
            res = compare(a_rows + b_rows, lambda r, s=ids_a: id(r) in s, lambda r, s=ids_b: id(r) in s,
                          metric=m.key, floor=floor, utility=spec.utility, better=m.better, log=m.log)
            entry = {"pruning": pruning, "target_sparsity": sp, "objective": obj, "a": a_name, "b": b_name,
                     "metric": metric_name(m), "utility_floor": floor, "seeds": res["seeds"],
                     "a_mean": res["a_mean"], "b_mean": res["b_mean"], "diff_mean": res["diff_mean"],
                     "ci95": res["ci95"], "verdict": res["verdict"], "better_direction": m.better,
                     "paired_seeds": res["paired_seeds"], "per_seed": res["per_seed"]}
            if grid:
                entry["grid"] = dict(grid)
            out.append(entry)
    return out


__all__ = ["FQ_LOG_FLOOR", "MIN_SEEDS", "VERDICTS", "compare", "comparison_pairs", "grid_key", "metric_name",
           "metric_value", "report_comparisons", "seed_values", "t_interval", "value_at_floor", "verdict"]
