"""How finely a forget metric can move, and whether a claimed effect is smaller than one of its steps (SPEC 7).

Why. Forget quality is the p-value of a two-sample KS test between the unlearned model's per-example truth ratios
on the n forget examples and the retain model's on the same n. With n against n, the KS statistic D is a multiple
of 1/n, and without ties D >= 1/n, so the p-value takes at most n values: 1 (D = 1/n) and n - 1 below 1. With
20 forget examples neighbouring values near 0.2-0.6 are 0.16-0.28 apart in log10 (0.175, 0.336, 0.571, 0.832),
so a difference of +0.16 in log10 is about one forget example changing rank, however continuous a mean over
learning rates or seeds makes it look. A study therefore needs forget sets large enough that the step near where
it reads the metric is well below the effect it claims, and a continuous companion metric.

What each kind of metric can do (``RESOLUTIONS``, keyed by the metric's key):
- ``ks``: the KS p-values of n vs n examples (forget quality, against either retain model). The attainable values
  are computed with ``scipy.stats.ks_2samp`` itself on samples built to have D = k/n, so they are exactly what the
  evaluation reports (scipy's exact distribution for small n, its asymptotic one for large n).
- ``accuracy``: a share of n questions answered right (WMDP, MMLU): steps of exactly 1/n.
- ``mean``: a mean of n per-example scores in [0, 1] (ROUGE, probabilities, extraction strength, truth ratio,
  model utility): no fixed step, but one example moves it by at most 1/n.
A metric not listed is reported as ``unknown``.
"""

from __future__ import annotations

import bisect
import math
import warnings
from functools import lru_cache

from .comparisons import FQ_LOG_FLOOR

RESOLUTIONS = {
    "forget_quality": "ks", "forget_quality_pruned_retain": "ks",
    "wmdp_acc": "accuracy", "mmlu_acc": "accuracy",
    "forget_rouge": "mean", "forget_probability": "mean", "extraction_strength": "mean", "retain_rouge": "mean",
    "model_utility": "mean", "forget_truth_ratio": "mean", "forget_verbmem_rouge": "mean",
    "forget_knowmem_rouge": "mean", "retain_knowmem_rouge": "mean", "exact_memorization": "mean",
    "wmdp_prob": "mean",
}


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: give the number of examples the metric is computed on, a positive integer")
    return n


@lru_cache(maxsize=64)
def ks_pvalues(n: int) -> tuple[float, ...]:
    """Every p-value ``scipy.stats.ks_2samp`` can give for two samples of `n` values each without ties (D = k/n,
    k = 1..n), distinct and in decreasing order: at most `n` values, the first 1 (fewer for large n, where the
    asymptotic p-values of neighbouring D coincide in floating point)."""
    import numpy as np
    from scipy.stats import ks_2samp

    x = np.arange(_check_n(n), dtype=float)
    with warnings.catch_warnings():  # for large n scipy says it fell back to the asymptotic p-value, as evaluation does
        warnings.simplefilter("ignore", RuntimeWarning)
        values = {float(ks_2samp(x, x + k - 0.5).pvalue) for k in range(1, n + 1)}  # shift k - 1/2: D = k/n
    return tuple(sorted(values, reverse=True))


def ks_step(n: int, value: float, log: bool = True) -> dict:
    """The step of a KS p-value of `n` vs `n` examples near `value` (a log10 p-value when `log`, else a p-value).

    Returns ``nearest`` (the attainable p-value closest to `value` on that scale), ``below`` and ``above`` (its
    neighbours; None at an end) and ``step``: the smaller distance from ``nearest`` to a neighbour, on the same scale
    (None with a single value). This is the smallest move of the metric from there: one example changing rank.
    """
    ps = ks_pvalues(n)
    asc = sorted({math.log10(max(p, FQ_LOG_FLOOR)) for p in ps} if log else set(ps))  # log10 as comparisons reads it
    i = bisect.bisect_left(asc, value)
    cands = [j for j in (i - 1, i) if 0 <= j < len(asc)]
    j = min(cands, key=lambda j: abs(asc[j] - value))
    below = asc[j - 1] if j > 0 else None
    above = asc[j + 1] if j + 1 < len(asc) else None
    gaps = [abs(asc[j] - x) for x in (below, above) if x is not None]
    return {"nearest": asc[j], "below": below, "above": above, "step": min(gaps) if gaps else None}


def metric_resolution(metric: str, n: int, value: float | None = None, log: bool = False) -> dict:
    """What `metric`, computed on `n` examples, can resolve near `value` (on the comparison's scale: log10 when `log`).

    Returns ``metric``, ``kind`` (``ks``, ``accuracy``, ``mean`` or ``unknown``), ``values`` (how many values it
    can take; None if not finite), ``step`` (the smallest move near `value`, on the same scale; None when the metric
    has no fixed step or `value` is needed and missing) and ``note`` (one sentence for the report).
    """
    kind = RESOLUTIONS.get(metric, "unknown")
    n = _check_n(n)
    if kind == "ks":
        ps = ks_pvalues(n)
        step = ks_step(n, value, log)["step"] if value is not None else None
        note = (f"KS p-value of {n} vs {n} examples: {len(ps)} values ({len(ps) - 1} below 1)"
                + (f"; near {value:.3g} one example changing rank moves it by {step:.3g}" if step is not None else "")
                + (" in log10" if log and step is not None else ""))
        return {"metric": metric, "kind": kind, "values": len(ps), "step": step, "note": note}
    if kind == "accuracy":
        return {"metric": metric, "kind": kind, "values": n + 1, "step": 1.0 / n,
                "note": f"share of {n} questions: steps of 1/{n} = {1.0 / n:.3g}"}
    if kind == "mean":
        return {"metric": metric, "kind": kind, "values": None, "step": None,
                "note": f"mean over {n} examples: no fixed step; one example moves it by at most 1/{n} = {1.0 / n:.3g}"}
    return {"metric": metric, "kind": kind, "values": None, "step": None, "note": "resolution not known"}


def below_resolution(effect: float, metric: str, n: int, value: float | None = None, log: bool = False) -> bool | None:
    """Whether `effect` (a difference on the comparison's scale) is smaller in size than one step of `metric` near
    `value`; None when the metric has no fixed step there (nothing to compare against)."""
    step = metric_resolution(metric, n, value, log)["step"]
    return None if step is None else abs(effect) < step


__all__ = ["RESOLUTIONS", "below_resolution", "ks_pvalues", "ks_step", "metric_resolution"]
