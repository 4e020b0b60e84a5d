"""What the report concludes: its comparisons over a utility band, and the sentences that state them (SPEC 7).

Each pair of methods the report compares (`comparisons.comparison_pairs`: SAU against plain on every model, plain
on a sparse model against plain on the dense one) is read by `frontier.compare_band`, once per forget metric:

- **Band.** ``report.utility_band`` (default `frontier.DEFAULT_BAND`, [0.85, 0.95]) times the utility of the
  comparison's own starting model: for SAU against plain the model both start from (the pruned model on a sparse
  row, the finetuned model on the dense one); for the sparsity penalty the sparse side's start, the pruned model
  (a band relative to the dense model's utility lies above what a heavily pruned model ever reaches, so no seed
  would pair). A recipe that sets the former ``report.utility_fraction`` gets a band of width 0 at that fraction,
  and the report says so.
- **Points.** When every run of both sides has a trajectory (``unlearn.eval_steps``), the frontiers are built from
  the trajectory evaluations only, step 0 included, and the starting utility is the mean step-0 utility of the
  `a` side's runs: the trajectory may use a cheaper evaluation (``unlearn.eval_rows``,
  ``unlearn.eval_max_new_tokens``) whose utility is defined differently from the final evaluation's, so the two are
  never mixed in one frontier. Otherwise the final evaluations are the points and the start is the starting
  model's reference row. ``points`` says which.
- **Resolution.** Each comparison carries its metric's resolution (`resolution.metric_resolution`) on the forget
  set's size, near the sides' values, and whether the difference is below one step of the metric.

report.json's ``comparisons`` keep the keys they had (``utility_floor`` is now the band's bottom, an absolute
utility) and gain ``band``, ``fragile``, ``sensitivity``, ``points``, ``resolution`` and ``reason`` (why there is
no value, None when there is one). report.md's opening section states every verdict in words, fragile ones as such.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .comparisons import MIN_SEEDS, comparison_pairs, grid_key, metric_name
from .frontier import DEFAULT_BAND, compare_band
from .report_format import SIDE_NAMES, start_reference  # noqa: F401  (re-exported)
from .resolution import below_resolution, metric_resolution


# ----------------------------------------------------------------------------------------- the recipe's band
def recipe_band(report_section) -> tuple[tuple[float, float], str | None]:
    """``((lo, hi), note)``: the band fractions of a recipe's ``report`` section and, for the former
    ``utility_fraction``, the sentence the report prints about it (None otherwise)."""
    fraction = getattr(report_section, "utility_fraction", None)
    band = getattr(report_section, "utility_band", None)
    if fraction is not None:
        return (float(fraction), float(fraction)), (
            f"report.utility_fraction {fraction:g} is read as a utility band of width 0 ([{fraction:g}, "
            f"{fraction:g}]): the frontiers are read at that one floor, which is fragile by construction (set "
            f"report.utility_band, e.g. [{DEFAULT_BAND[0]:g}, {DEFAULT_BAND[1]:g}], for a band).")
    lo, hi = band if band is not None else DEFAULT_BAND
    return (float(lo), float(hi)), None


def check_recipe(recipe, errors: list[str]) -> None:
    """``report.utility_band``: two fractions 0 < lo <= hi <= 1, and not together with ``report.utility_fraction``."""
    r = recipe.report
    if r.utility_band is None:
        return
    band = r.utility_band
    ok = (len(band) == 2 and all(isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x)
                                 for x in band) and 0 < band[0] <= band[1] <= 1)
    if not ok:
        errors.append(f"report.utility_band: give two fractions of the starting model's utility, [lo, hi] with "
                      f"0 < lo <= hi <= 1, got {band!r} (default [{DEFAULT_BAND[0]:g}, {DEFAULT_BAND[1]:g}])")
    if r.utility_fraction is not None:
        errors.append("report: give report.utility_band or the former report.utility_fraction (a band of width 0), "
                      "not both")


# ----------------------------------------------------------------------------------------- starting utilities
def _step0_utility(runs: Sequence[Mapping], utility: str) -> float | None:
    vals = [e.get(utility) for r in runs for e in r.get("trajectory") or () if e.get("step") == 0]
    vals = [float(v) for v in vals if isinstance(v, int | float) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def forget_count(rows: Sequence[Mapping]) -> int | None:
    """The number of forget examples the metrics were computed on (rows carry ``n_forget``; the largest)."""
    ns = [r["n_forget"] for r in rows if isinstance(r.get("n_forget"), int) and r["n_forget"] > 0]
    return max(ns) if ns else None


# ----------------------------------------------------------------------------------------- the comparisons
def _empty(reason: str) -> dict:
    return {"seeds": 0, "paired_seeds": 0, "a_mean": None, "b_mean": None, "diff_mean": None, "ci95": None,
            "verdict": "inconclusive", "per_seed": [], "fragile": False, "sensitivity": [], "reason": reason}


def _reason(res: dict) -> str | None:
    """Why a comparison has no verdict for want of seeds (None when it has enough paired seeds)."""
    if res.get("reason"):
        return res["reason"]
    if res["paired_seeds"] >= MIN_SEEDS:
        return None
    dropped = [f"seed {e['seed']}: {e['dropped']}" for e in res["per_seed"] if e.get("dropped")]
    return (f"{res['paired_seeds']} paired seed(s), {MIN_SEEDS} needed" + (f" ({'; '.join(dropped)})" if dropped
                                                                           else ""))


def band_comparisons(rows: Sequence[Mapping], spec, band: Sequence[float] = DEFAULT_BAND) -> list[dict]:
    """The report's comparisons over the utility band `band` (fractions of each comparison's starting model's
    utility), one per pair of methods (`comparison_pairs`) and forget metric of `spec` (a `ReportSpec`)."""
    rows = list(rows)
    n = forget_count(rows)
    out = []
    for pruning, sp, obj, grid, a_name, b_name, a_rows, b_rows in comparison_pairs(rows):
        trajectories = all(r.get("trajectory") for r in a_rows + b_rows)
        if trajectories:  # the trajectory points only: the final evaluation's utility may be defined differently
            side_rows = [{**r, "metrics": {}} for r in a_rows + b_rows]
            start = _step0_utility(a_rows, spec.utility)
            start_from = "the mean step-0 utility of the runs' trajectories"
        else:
            side_rows = list(a_rows + b_rows)
            ref = start_reference(rows, a_rows[0])
            start = None if ref is None else ref["metrics"].get(spec.utility)
            start_from = f"reference row {ref['name']!r}" if ref is not None else "no reference row"
        ids_a = {id(r) for r in side_rows[:len(a_rows)]}
        ids_b = {id(r) for r in side_rows[len(a_rows):]}
        for m in spec.forget:
            try:
                res = compare_band(side_rows, lambda r, s=ids_a: id(r) in s, lambda r, s=ids_b: id(r) in s,
                                   metric=m.key, start_utility=start, band=band, utility=spec.utility,
                                   better=m.better, log=m.log)
                lo = res["band"]["utility"][0]
                res["reason"] = _reason(res)
            except ValueError as err:  # no usable starting utility (or a bad band): no value, said why
                res, lo = _empty(f"{err} ({start_from})"), None
                res["band"] = {"fractions": [float(band[0]), float(band[1])], "start_utility": start,
                               "utility": None, "width_zero": band[0] == band[1]}
            res["band"]["start"] = start_from
            near = [v for v in (res["a_mean"], res["b_mean"]) if v is not None]
            resolution = None
            if n is not None:
                value = sum(near) / len(near) if near else None
                resolution = {"n": n, **metric_resolution(m.key, n, value, m.log)}
                resolution["diff_below_step"] = (None if res["diff_mean"] is None else
                                                 below_resolution(res["diff_mean"], m.key, n, value, m.log))
            entry = {"pruning": pruning, "target_sparsity": sp, "objective": obj, "a": a_name, "b": b_name,
                     "metric": metric_name(m), "utility_floor": lo, "seeds": res["seeds"],
                     "a_mean": res["a_mean"], "b_mean": res["b_mean"], "diff_mean": res["diff_mean"],
                     "ci95": res["ci95"], "verdict": res["verdict"], "better_direction": m.better,
                     "paired_seeds": res["paired_seeds"], "per_seed": res["per_seed"], "band": res["band"],
                     "fragile": res["fragile"], "sensitivity": res["sensitivity"],
                     "points": "trajectories" if trajectories else "final", "resolution": resolution,
                     "reason": res["reason"]}
            if grid:
                entry["grid"] = dict(grid)
            out.append(entry)
    return out


# ----------------------------------------------------------------------------------------- report.md
def _fmt(v: Any) -> str:
    from .report_format import _fmt as fmt

    return fmt(v)


def _where(c: Mapping) -> str:
    return "dense model" if c["pruning"] is None else f"{c['pruning']} {c['target_sparsity']:.0%} model"


def metric_label(spec, name: str) -> str:
    for m in spec.forget:
        if name in (m.key, f"{m.key}_log10"):
            return f"{m.label} (log10)" if name.endswith("_log10") else m.label
    return name


def _flips(c: Mapping) -> str:
    """Which recomputations change the verdict: "floor 0.9, without lr 1e-3"."""
    parts = []
    for e in c.get("sensitivity") or ():
        if e.get("flips"):
            parts.append(f"the single floor {e['floor_fraction']:.3g} of the start" if e["kind"] == "floor"
                         else f"leaving out lr {e['learning_rate']:g}")
    return ", ".join(parts)


def verdict_words(c: Mapping, label: str = "") -> str:
    """The verdict in words, fragile ones as such: for a lower-is-more-forgotten metric (ROUGE) "forgets
    more/less"; for a higher-is-better one (forget quality) "the higher/lower <label>"; an inconclusive one says
    why."""
    a, b = SIDE_NAMES.get(c["a"], c["a"]), SIDE_NAMES.get(c["b"], c["b"])
    higher = c.get("better_direction") == "max"
    if c["verdict"] in ("better", "worse"):
        if higher and label:
            words = f"{a} has the {'higher' if c['verdict'] == 'better' else 'lower'} {label}"
        else:
            words = f"{a} forgets {'more' if c['verdict'] == 'better' else 'less'} than {b}"
        if c.get("fragile"):
            return f"**fragile: {words}** over the band, but not at {_flips(c)}"
        return f"**{words}**"
    if c.get("reason"):
        why = f"inconclusive ({c['reason']})"
    else:
        why = "inconclusive (the interval contains 0)"
    if c.get("fragile"):
        why += f"; **fragile**: recomputations disagree in sign ({_flips(c)})"
    return why


def findings_section(comparisons: list[dict], spec, band: Sequence[float], note: str | None,
                     trajectory_note: str | None) -> list[str]:
    """The opening section of report.md: the verdicts in sentences, one line per (model, objective, pair)."""
    from .report_format import grid_label, objective_label
    from .report_summary import agreement_sentence, bottom_line, companion_sentence, resolution_words

    lines = ["## What this run shows", ""]
    if not comparisons:
        return lines + ["No comparison: the grid needs SAU and plain runs of one objective (or plain runs on a "
                        "sparse and the dense model) to compare.", ""]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in comparisons:
        groups[(c["pruning"], c["target_sparsity"], c["objective"], c["a"], c["b"], grid_key(c.get("grid")))].append(c)
    heads = {}
    for key, cs in groups.items():
        _, _, obj, a, b, grid = key
        heads[key] = (f"{SIDE_NAMES.get(a, a)} against {SIDE_NAMES.get(b, b)}, {objective_label(obj)}"
                      f"{grid_label(dict(grid))}, {_where(cs[0])}" if a == "sau" else
                      f"the sparsity penalty ({SIDE_NAMES[a]} against {SIDE_NAMES[b]}), {objective_label(obj)}"
                      f"{grid_label(dict(grid))}, {cs[0]['pruning']} {cs[0]['target_sparsity']:.0%}")
    lines += [bottom_line([(heads[k], cs) for k, cs in groups.items()], lambda name: metric_label(spec, name)), ""]
    decided = [c for c in comparisons if c["verdict"] != "inconclusive"]
    fragile = [c for c in decided if c.get("fragile")]
    n_seeds = max(c["seeds"] for c in comparisons)
    lo, hi = band
    band_words = (f"at one floor, {lo:.0%} of" if lo == hi else f"over a utility band, {lo:.0%} to {hi:.0%} of")
    lines += [f"Methods compared {band_words} each comparison's starting model's {spec.utility_label} (SAU against "
              "plain: the model both start from; the sparsity penalty: the pruned model). Per seed, each method's "
              f"frontier (its best forget metric over all its points with {spec.utility_label} at least u) is "
              "averaged over the band; the two methods are paired by seed, with a 95% t interval of the mean "
              f"difference. {len(decided)} of {len(comparisons)} comparisons reach a verdict"
              + (f", {len(fragile)} of them fragile (single floors across the band or leaving out one learning "
                 "rate change the sign)" if fragile else "")
              + f" ({n_seeds} seeds" + (f"; {MIN_SEEDS} are needed for any verdict" if n_seeds < MIN_SEEDS else "")
              + ").", ""]
    if note:
        lines += [note, ""]
    if trajectory_note and any(c["points"] == "trajectories" for c in comparisons):
        lines += [trajectory_note, ""]
    companion = companion_sentence(spec)
    if companion:
        lines += [companion, ""]
    for key, cs in groups.items():
        _, _, obj, a, b, grid = key
        head = (f"**{SIDE_NAMES.get(a, a)} against {SIDE_NAMES.get(b, b)}**, {objective_label(obj)}"
                f"{grid_label(dict(grid))}, {_where(cs[0])}" if a == "sau" else
                f"**the sparsity penalty** ({SIDE_NAMES[a]} against {SIDE_NAMES[b]}), {objective_label(obj)}"
                f"{grid_label(dict(grid))}, {cs[0]['pruning']} {cs[0]['target_sparsity']:.0%}")
        parts = []
        for c in cs:
            label = metric_label(spec, c["metric"])
            ci = "" if c["ci95"] is None else f", 95% CI [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]"
            diff = ("" if c["diff_mean"] is None else
                    f" ({_fmt(c['a_mean'])} against {_fmt(c['b_mean'])}, difference {_fmt(c['diff_mean'])}{ci}, "
                    f"{c['paired_seeds']} paired seeds)")
            parts.append(f"{label}: {verdict_words(c, label)}{diff}{resolution_words(c, _fmt)}")
        lines.append(f"- {head}: " + "; ".join(parts) + ". "
                     + agreement_sentence(cs, lambda name: metric_label(spec, name)))
    return lines + [""]


def definitions_lines(spec, band: Sequence[float]) -> list[str]:
    """How to read the comparisons (report.md's "How to read this report")."""
    lo, hi = band
    return ["Comparisons (report.json `comparisons`, the table below):", "",
            f"- **band**: {spec.utility_label} from {lo:.0%} to {hi:.0%} of the comparison's starting model's "
            "(SAU against plain: the model both start from; the sparsity penalty: the pruned model); "
            "`utility_floor` in report.json is its bottom.",
            "- **a**, **b**: the two methods: `sau` and `plain` (the same objective, sparsity mask only) on one "
            "model; `sparse-plain` and `dense-plain` (plain unlearning on the pruned model and on the dense one: "
            "the sparsity penalty).",
            "- **metric**: the forget metric compared (forget quality as log10 of the p-value).",
            f"- **frontier** (per method and seed): at {spec.utility_label} u, the best forget metric over every "
            "point of the method (each learning rate; each evaluation during unlearning when the runs have "
            "trajectories, else the final evaluations) whose utility is at least u. **a mean**, **b mean**: the "
            "exact mean of each side's frontier over the band, averaged over the paired seeds; a seed pairs when "
            "both frontiers cover the whole band.",
            "- **difference**, **95% CI**: mean of a - b over the paired seeds and its Student t interval.",
            "- **verdict**: `better` (a forgets more: the whole interval on the forget metric's better side, "
            "higher forget quality or lower forget ROUGE), `worse` (the whole interval on the other side), "
            "`inconclusive` (the interval contains 0, or fewer than 3 paired seeds).",
            "- **fragile**: the verdict recomputed at single floors across the band and with each learning rate "
            "left out changes sign (report.json `sensitivity`).",
            "- **resolution**: how finely the metric can move on the forget set's size (forget quality on n forget "
            "examples takes at most n values); a difference below one step is one example changing rank.", ""]


def comparisons_table(comparisons: list[dict], spec) -> list[str]:
    from .report_format import _table, grid_label, objective_label

    def step(c):
        r = c.get("resolution") or {}
        return r.get("step")

    cols = [("model", _where), ("objective", lambda c: objective_label(c["objective"]) + grid_label(c.get("grid"))),
            ("a vs b", lambda c: f"{c['a']} vs {c['b']}"), ("metric", lambda c: metric_label(spec, c["metric"])),
            ("band", lambda c: "–" if not c["band"].get("utility") else
             f"[{_fmt(c['band']['utility'][0])}, {_fmt(c['band']['utility'][1])}]"),
            ("points", lambda c: c["points"]), ("seeds", lambda c: c["seeds"]),
            ("paired", lambda c: c["paired_seeds"]), ("a mean", lambda c: c["a_mean"]),
            ("b mean", lambda c: c["b_mean"]), ("difference", lambda c: c["diff_mean"]),
            ("95% CI", lambda c: None if c["ci95"] is None else f"[{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]"),
            ("verdict", lambda c: c["verdict"]), ("fragile", lambda c: c["fragile"]),
            ("metric step", step)]
    return ["## Comparisons over the utility band", "",
            "Band in absolute utility; per-seed values, the sensitivity recomputations and the resolution notes in "
            "report.json (`comparisons[].per_seed`, `.sensitivity`, `.resolution`).", ""] + _table(comparisons, cols) \
        + [""]


__all__ = ["SIDE_NAMES", "band_comparisons", "check_recipe", "comparisons_table", "definitions_lines",
           "findings_section", "forget_count", "recipe_band", "start_reference", "verdict_words"]
