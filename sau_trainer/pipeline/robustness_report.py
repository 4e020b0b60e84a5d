"""The robustness of forgetting in the report: the table of report.md (how much of the forgetting each attack undid,
as a ratio of means) and robustness.png (the unlearn-then-prune check and the attacks, compared at matched utility).

Why at matched utility. Averaged over every learning rate, an attack's effect mixes runs that barely unlearned with
runs that broke the model, so two methods are compared at different utilities. robustness.png takes only the runs
whose final utility lies in the utility band of their own starting model (`report_plots.in_band`), averages each
seed's runs, and shows the mean over seeds with one standard deviation over seeds. The table keeps the means over
all the method's runs and says so; its "forgetting undone" is a ratio of those means, so its sign agrees with the
columns beside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from ..benchmarks.tofu.report import TOFU_REPORT
from .frontier import DEFAULT_BAND
from .report_format import _save, _table, method_key, method_label, start_reference
from .report_plots import in_band, seed_mean_sd


def _log10(v):
    return math.log10(max(v, 1e-30)) if v is not None else None


def robustness_table(rows: list[dict], spec) -> list[dict]:
    """Per method and attack: each forget metric of the unlearned runs before and after the attack (means over
    learning rates and seeds), the references the runs started from and the retain model, and the fraction of
    the forgetting the attack undid on the second forget metric (TOFU: forget ROUGE), a ratio of means over the
    runs with all three values: ``(mean after - mean before) / (mean start - mean before)`` (None when the runs
    forgot nothing on average). Not a mean of per-run ratios: a run that forgot almost nothing has a denominator
    near 0, and its ratio alone could give the mean a sign that contradicts the before and after columns."""
    refs = {r["name"]: r for r in rows if r["reference"]}
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    labels: dict[tuple, str] = {}
    m0, m1 = spec.forget
    for r in rows:
        if r["reference"] or r.get("unlearn_then_prune") or not r.get("robustness"):
            continue
        pid = r["name"].split(f"-{r['objective']}-")[0]  # sparse runs are named <pruning>-<objective>-...
        start_name = "finetuned" if r["model"] == "dense" else f"finetuned+{pid}"
        start = refs.get(start_name) or refs.get("finetuned")
        retain = refs.get("retain")
        for attack, after in r["robustness"].items():
            key = (method_key(r), attack)
            labels[key] = method_label(r)
            g = groups[key]
            g["runs"].append(r["name"])
            if "skipped" in after:
                g["skipped"].append(after["skipped"])
                continue
            for i, m in enumerate(spec.forget):
                g[f"before{i}"].append(r["metrics"].get(m.key))
                g[f"after{i}"].append(after.get(m.key))
            g["start1"].append(start and start["metrics"].get(m1.key))
            g["retain1"].append(retain and retain["metrics"].get(m1.key))
            b, a, s0 = r["metrics"].get(m1.key), after.get(m1.key), start and start["metrics"].get(m1.key)
            if None not in (b, a, s0):
                g["undone"].append((b, a, s0))
    table = []
    for (mk, attack), g in groups.items():
        def mean(key, log=False, g=g):
            vals = [(_log10(v) if log else v) for v in g.get(key, []) if v is not None]
            return sum(vals) / len(vals) if vals else None
        table.append({"method": labels[(mk, attack)], "attack": attack, "runs": len(g["runs"]),
                      "skipped": g["skipped"][0] if g.get("skipped") else None,
                      "before0": mean("before0", m0.log), "after0": mean("after0", m0.log),
                      "before1": mean("before1"), "after1": mean("after1"), "start1": mean("start1"),
                      "retain1": mean("retain1"), "undone": _undone(g.get("undone", []))})
    return table


def _undone(triples: list[tuple]) -> float | None:
    """``(mean after - mean before) / (mean start - mean before)`` over (before, after, start) triples."""
    if not triples:
        return None
    b, a, s0 = (sum(t[i] for t in triples) / len(triples) for i in range(3))
    return (a - b) / (s0 - b) if abs(s0 - b) > 1e-9 else None


def _percent(v: float | None) -> str | None:
    """50%, 10%, 1.5%, -0.3%: whole percents from 10% up, one decimal below (a small share keeps its sign and size)."""
    if v is None:
        return None
    return f"{v:.0%}" if abs(v) >= 0.095 else f"{v:.1%}"


def markdown_section(rows: list[dict], spec, band=None) -> list[str]:
    """report.md: how much of the forgetting each attack undoes, per method, and what robustness.png shows (the runs
    inside the utility band `band`, fractions of each run's start model's utility; default `frontier.DEFAULT_BAND`)."""
    band = DEFAULT_BAND if band is None else (band, band) if isinstance(band, int | float) else tuple(band)
    table = robustness_table(rows, spec)
    if not table:
        return []
    m0, m1 = spec.forget
    l0 = f"log10 {m0.short}" if m0.log else m0.short
    cols = [("method", lambda r: r["method"]), ("attack", lambda r: r["attack"]), ("runs", lambda r: r["runs"]),
            (f"{m1.label}: start model", lambda r: r["start1"]), ("retain model", lambda r: r["retain1"]),
            ("unlearned", lambda r: r["before1"]), ("attacked", lambda r: r["after1"]),
            ("forgetting undone (ratio of means)", lambda r: _percent(r["undone"])),
            (f"{l0} unlearned", lambda r: r["before0"]), (f"{l0} attacked", lambda r: r["after0"])]
    skipped = sorted({(r["attack"], r["skipped"]) for r in table if r["skipped"]})
    lines = ["## Robustness of forgetting (does the forgetting survive?)", "",
             f"Each unlearned model attacked and evaluated again; means over the method's learning rates and seeds. "
             f"`forgetting undone` (a ratio of means, so it agrees with the columns beside it): (attacked - "
             f"unlearned) / (start - unlearned) on {m1.label}, each a mean over the runs, where start is the "
             "model the run unlearned (0%: the attack brought nothing back, 100%: all of it; negative: it forgot "
             "more). The relearning attack finetunes on part of the forget set and is judged on the rest of it "
             "(unless evaluate.relearn_judge_on_relearned_rows). Per run: report.json, `robustness`.", "",
             f"robustness.png compares the methods at matched utility instead: only the runs whose final "
             f"{spec.utility_label} lies in the band ({band[0]:.0%} to {band[1]:.0%} of their start model's), each "
             "seed's runs averaged, then the mean over seeds with error bars of ±1 s.d. over seeds; methods: "
             + "; ".join(f"{m}: {len(rs)} run(s) in the band" for m, rs in matched_runs(rows, spec, band).items())
             + ".", ""]
    lines += _table([r for r in table if not r["skipped"]], cols) + [""]
    for attack, reason in skipped:
        lines.append(f"- {attack}: skipped ({reason})")
    return lines + ([""] if skipped else [])


def matched_runs(rows: list[dict], spec, band) -> dict[str, list[dict]]:
    """Per method label: its attacked unlearning runs whose final utility lies in the utility band (`band`: fractions
    of each run's starting model's utility, `report_plots.in_band`): the runs robustness.png compares, so methods
    are compared at matched utility rather than averaged over every learning rate. A method without such a run maps
    to an empty list."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        if r["reference"] or r.get("unlearn_then_prune") or not r.get("robustness"):
            continue
        out.setdefault(method_label(r), [])
        if in_band(rows, r, spec.utility, band):
            out[method_label(r)].append(r)
    return out


def plot_robustness(ax, rows: list[dict], spec, band=None) -> bool:
    """Bars per method at matched utility: the second forget metric of the method's runs inside the utility band
    (`matched_runs`), unlearned and after each attack, as the mean over seeds (each seed's runs averaged first) with
    bars of one standard deviation over seeds; the start and retain models' values as lines. A method with no run in
    the band is named, not drawn. Returns False (nothing drawn) without attacked runs."""
    import numpy as np

    band = DEFAULT_BAND if band is None else (band, band) if isinstance(band, int | float) else tuple(band)
    table = [r for r in robustness_table(rows, spec) if not r["skipped"]]
    if not table:
        return False
    m1 = spec.forget[1]
    chosen = matched_runs(rows, spec, band)
    methods = list(dict.fromkeys(r["method"] for r in table))
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    width = 0.8 / (len(attacks) + 1)
    x = np.arange(len(methods))
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    series = [("unlearned", "0.55", lambda r: r["metrics"].get(m1.key))]
    series += [(f"after {a}", cmap(j % 10), lambda r, a=a: (r["robustness"].get(a) or {}).get(m1.key))
               for j, a in enumerate(attacks)]
    ticks = []
    for i, m in enumerate(methods):
        runs = chosen.get(m, [])
        n_seeds = len({r["seed"] for r in runs})
        ticks.append(f"{m}\n({len(runs)} runs in the band, {n_seeds} seeds)" if runs else f"{m}\n(no run in the band)")
        if not runs:
            ax.text(i, 0.02, "no run in the band", ha="center", va="bottom", fontsize=7, rotation=90,
                    transform=ax.get_xaxis_transform())
            continue
        for j, (label, colour, get) in enumerate(series):
            mean, sd, _ = seed_mean_sd((r["seed"], get(r)) for r in runs)
            if mean is None:
                continue
            ax.bar(i - 0.4 + width * (j + 0.5), mean, width, yerr=sd, capsize=2, color=colour,
                   label=label if label not in ax.get_legend_handles_labels()[1] else None,
                   error_kw={"elinewidth": 0.8})
        ref = start_reference(rows, runs[0])
        s0 = ref and ref["metrics"].get(m1.key)
        if s0 is not None:
            ax.plot([i - 0.42, i + 0.42], [s0] * 2, color="black", lw=1.5,
                    label="start model (before unlearning)" if "start model (before unlearning)" not in
                    ax.get_legend_handles_labels()[1] else None)
        retain = next((r for r in rows if r["reference"] and r["name"] == "retain"), None)
        if retain is not None and retain["metrics"].get(m1.key) is not None:
            ax.plot([i - 0.42, i + 0.42], [retain["metrics"][m1.key]] * 2, color="tab:green", lw=1.5, ls="--",
                    label="retain model" if "retain model" not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xticks(x)
    ax.set_xticklabels(ticks, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(f"{m1.label} ({'lower' if m1.better == 'min' else 'higher'} = more forgotten)")
    lo, hi = band
    where = f"{lo:.0%} to {hi:.0%}" if hi > lo else f"at {lo:.0%}"
    ax.set_title(f"Robustness of forgetting at matched utility: the runs with utility {where} of their start "
                 "model's;\nbars: mean over seeds, error bars: ±1 s.d. over seeds", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return True


def then_prune_means(rows: list[dict], spec=None, band: Sequence[float] | None = None) -> list[dict]:
    """Per dense method and pruning: the second forget metric (TOFU: forget ROUGE) of the unlearned dense runs, the
    same runs pruned afterwards, and the same objective run on the pruned model (prune-then-unlearn, None where
    the grid has no such run). Without `band`: means over all the runs (learning rates and seeds). With `band`
    (fractions of the finetuned model's utility): only the dense runs whose utility lies in it (`in_band`), each
    seed's runs averaged first, then the mean over seeds, with ``<key>_sd`` (one s.d. over seeds) and ``seeds``."""
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


__all__ = ["markdown_section", "matched_runs", "plot_robustness", "plot_robustness_figure", "robustness_table",
           "then_prune_means"]
