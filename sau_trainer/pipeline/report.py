"""The report of a run: ``report.json``, ``report.md``, ``tradeoff.png`` (and ``robustness.png`` with
unlearn-then-prune or attacked runs) at the top of the output directory.

One row per evaluated model. ``measured_sparsity`` is what the evaluation counted in the saved
weights it loaded (exact zeros over the prunable matrices), never the setting. ``comparisons`` holds
what the run concludes (SPEC section 7, `sau_trainer.pipeline.comparisons`); report.md states it in
words first.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..benchmarks.registry import get_benchmark
from ..benchmarks.report_spec import ReportSpec
from ..benchmarks.tofu.report import TOFU_REPORT
from ..evaluation.compat import definitions_label
from ..evaluation.results import load_results
from .comparisons import metric_value
from .frontier import DEFAULT_BAND
from .report_format import (  # noqa: F401  (re-exported: the report's API)
    _fmt,
    _save,
    _short_lr,
    _table,
    grid_label,
    lr_text,
    method_key,
    method_label,
    objective_label,
)
from .report_verdicts import (
    band_comparisons,
    comparisons_table,
    definitions_lines,
    findings_section,
    recipe_band,
)
from .robustness_report import plot_robustness_figure, then_prune_means  # noqa: F401  (re-exported)

ROW_KEYS = ("name", "model", "pruning", "target_sparsity", "measured_sparsity", "objective", "sau",
            "learning_rate", "seed", "metrics")


def build_report(rows: list[dict], comparisons: list[dict] | None = None) -> dict:
    """``{"runs": [...], "references": [...]}`` from rows that carry their metadata and metrics, and
    ``"comparisons"`` when given (`report_verdicts.band_comparisons` makes them)."""
    out: dict[str, list] = {"runs": [], "references": []}
    for r in rows:
        row = {k: r[k] for k in ROW_KEYS}
        if r.get("grid"):  # the values of the recipe's extra grid axes (SAUConfig fields given as lists)
            row["grid"] = r["grid"]
        if r.get("robustness"):  # evaluate.robustness: the attacked copies' summaries, by attack
            row["robustness"] = r["robustness"]
        if r.get("trajectory"):  # unlearn.eval_steps: the evaluations during unlearning (step and metrics)
            row["trajectory"] = r["trajectory"]
        out["references" if r["reference"] else "runs"].append(row)
    if comparisons is not None:
        out["comparisons"] = comparisons
    return out


def collect_rows(ctx, eval_tasks) -> list[dict]:
    """Report rows from the evaluation tasks' metadata and their results.json files."""
    rows = []
    for t in eval_tasks:
        results = load_results(ctx.task_dir(t.name))
        m = t.meta
        if m.get("attack_of") and not m.get("unlearn_then_prune"):  # an attacked copy: folded into its run's row
            rows.append({**m, "metrics": results["summary"], "skipped": results.get("skipped"), "reference": False})
            continue
        rows.append({
            "name": m["name"], "model": m["model"], "pruning": m["pruning"],
            "target_sparsity": float(m["target_sparsity"]),
            "measured_sparsity": float(results["model"]["measured_sparsity"]),
            "objective": m["objective"], "sau": bool(m["sau"]), "learning_rate": m["learning_rate"],
            "seed": int(m["seed"]), "metrics": results["summary"], "reference": bool(m["reference"]),
            "unlearn_then_prune": bool(m.get("unlearn_then_prune")), "model_dir": m.get("model_dir"),
            **({"attack_of": m["attack_of"], "attack": m["attack"]} if m.get("attack_of") else {}),
            **({"grid": m["grid"]} if m.get("grid") else {}),
            **_trajectory_and_size(ctx, m, results),
        })
    from .robustness import fold_attacks

    return fold_attacks(rows)


def _trajectory_and_size(ctx, meta: dict, results: dict) -> dict:
    """``n_forget`` (the forget examples the metrics were computed on: the longest per-example list of a forget set)
    and, for an unlearning run evaluated with ``unlearn.eval_steps``, its ``trajectory`` (the unlearn task's
    trajectory.json)."""
    from .trajectories import read_trajectory

    out = {}
    sizes = [len(v) for k, per in (results.get("per_example") or {}).items() if str(k).startswith("forget")
             and isinstance(per, dict) for v in per.values() if isinstance(v, list)]
    if sizes:
        out["n_forget"] = max(sizes)
    src = meta.get("model_dir") or ""
    if not meta.get("reference") and not meta.get("unlearn_then_prune") and src.startswith("task:"):
        traj = read_trajectory(ctx.task_dir(src[5:]))
        if traj:
            out["trajectory"] = traj
    return out


def _pending_section(pending: list[str] | None) -> str:
    if not pending:
        return ""
    return ("\n## Not finished yet\n\n"
            f"{len(pending)} evaluation(s) have no result yet (a run with `--tasks`, or runs still at work); the "
            "report is rewritten by every run:\n\n" + "".join(f"- `{name}`\n" for name in pending))


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # runs sharing the directory never share a tmp
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def write_report(ctx, eval_tasks, pending: list[str] | None = None, diverged: list[dict] | None = None) -> dict:
    """Write the three report files into ``ctx.output_dir``; returns their paths. `pending`: evaluations not
    finished yet, listed under ``"pending"`` in report.json and at the end of report.md (only when there are);
    `diverged`: rows of the runs whose model diverged (`pipeline.diverged`), under ``"diverged"``. Without any
    finished evaluation (a grid job's ``--tasks``) no plot is drawn."""
    from .diverged import markdown_section

    rows = collect_rows(ctx, eval_tasks)
    spec = get_benchmark(ctx.recipe.data.benchmark).report
    comparisons = band_comparisons(rows, spec, recipe_band(ctx.recipe.report)[0])
    report = build_report(rows, comparisons)
    if pending:
        report["pending"] = list(pending)
    if diverged:
        report["diverged"] = list(diverged)
    out = ctx.output_dir
    _atomic_write(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    _atomic_write(out / "report.md", render_markdown(rows, ctx.recipe, comparisons) + markdown_section(diverged or [])
                  + _pending_section(pending))
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if ctx.recipe.report.plot and rows:
        plot_tradeoff(rows, out / "tradeoff.png", recipe_band(ctx.recipe.report)[0], spec, comparisons)
        files["plot"] = str(out / "tradeoff.png")
        if plot_robustness_figure(rows, out / "robustness.png", spec, recipe_band(ctx.recipe.report)[0]):
            files["robustness_plot"] = str(out / "robustness.png")
    return files


# ----------------------------------------------------------------------------------------- methods
def curves(rows: list[dict], spec: ReportSpec = TOFU_REPORT) -> dict[tuple, list[dict]]:
    """Per method: one point per learning rate, metrics averaged over seeds, sorted by learning rate."""
    by_method: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not r["reference"]:
            by_method[method_key(r)][r["learning_rate"]].append(r)
    out = {}
    for key, by_lr in by_method.items():
        points = []
        for lr in sorted(by_lr):
            group = by_lr[lr]
            points.append({"learning_rate": lr, "n_seeds": len(group), "label": method_label(group[0]),
                           **{k: _mean([g["metrics"].get(k) for g in group]) for k in spec.curve_keys}})
        out[key] = points
    return out


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------------------- markdown
def render_markdown(rows: list[dict], recipe, comparisons: list[dict] | None = None) -> str:
    """report.md: what the run concludes (in words), what every column means, the comparisons at the utility floor,
    then the references, the runs, the unlearn-then-prune check and the robustness of forgetting."""
    m = recipe.model
    model = m.name_or_path or f"Llama built from shape {m.shape!r}"
    d = recipe.data
    spec = get_benchmark(d.benchmark).report
    generated = get_benchmark(d.benchmark).generated
    bench = f"{d.benchmark}" + (f" (preset {d.preset}, seed {d.seed})" if generated else "")
    bench += f", subset {d.subset}" if d.subset else ""
    split = f", forget split {d.forget_split}" if get_benchmark(d.benchmark).protocol == "tofu" else ""
    band, band_note = recipe_band(recipe.report)
    if comparisons is None:
        comparisons = band_comparisons(rows, spec, band)
    lines = [f"# {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    runs = [r for r in rows if not r["reference"]]
    if runs:
        from .trajectories import trajectory_note

        lines += findings_section(comparisons, spec, band, band_note, trajectory_note(recipe))
    lines += _definitions_section(spec, band)
    lines += ["## Setup", "", f"- model: {model}", f"- benchmark: {bench}{split}",
              f"- definitions: {definitions_label(recipe.evaluate.compat)} (evaluate.compat)",
              "- rows: `model` is what was unlearned (dense: the finetuned model; sparse: a pruned one) or the "
              "reference (finetuned, retain); `pruning` is the pruning of the evaluated weights (a dense run "
              "with a pruning was unlearned first, then pruned)",
              *[f"- {note}" for note in spec.notes], "- measured sparsity: exact zeros in the saved weights "
              "over the prunable matrices",
              "- plots: tradeoff.png (each method's mean curve over learning rates; in the grey utility band, the "
              "thick line is its frontier averaged over seeds, what the verdicts compare); robustness.png (when "
              "unlearn-then-prune or attacks were run: the runs inside the utility band only, mean over seeds with "
              "±1 s.d. bars)", ""]
    metric_cols = [(label, lambda r, k=key: r["metrics"].get(k)) for label, key in spec.columns]
    common = [("name", lambda r: r["name"]), ("pruning", lambda r: r["pruning"]),
              ("target sparsity", lambda r: r["target_sparsity"]),
              ("measured sparsity", lambda r: r["measured_sparsity"])]
    refs = [r for r in rows if r["reference"]]
    if runs and comparisons:
        lines += comparisons_table(comparisons, spec)
    lines += ["## References (before unlearning)", ""] + _table(refs, common + metric_cols) + [""]
    if runs:
        run_cols = common[:1] + [("model", lambda r: r["model"])] + common[1:] + [
            ("objective", lambda r: r["objective"]), ("SAU", lambda r: r["sau"]),
            ("lr", lambda r: lr_text(r["learning_rate"])), ("seed", lambda r: r["seed"])]
        lines += ["## Unlearning runs", ""] + _table(runs, run_cols + metric_cols) + [""]
        lines += _then_prune_section(runs, spec)
        from .robustness import markdown_section

        lines += markdown_section(rows, spec, band)
    return "\n".join(lines) + "\n"


def _definitions_section(spec: ReportSpec, band) -> list[str]:
    lines = ["## How to read this report", "", "Metrics (columns of the tables):", ""]
    lines += [f"- **{label}**: {text}" for label, text in spec.definitions]
    return lines + [""] + definitions_lines(spec, band)


def _then_prune_section(runs: list[dict], spec: ReportSpec = TOFU_REPORT) -> list[str]:
    after = [r for r in runs if r.get("unlearn_then_prune")]
    if not after:
        return []
    m0, m1 = spec.forget
    by_name = {r["name"]: r for r in runs}
    table = []
    for r in after:
        dense_name = r["name"].rsplit("+", 1)[0]
        before = by_name.get(dense_name)
        sparse_name = f"{r['name'].rsplit('+', 1)[1]}-{dense_name.split('-', 1)[1]}"
        sparse = by_name.get(sparse_name)
        table.append({"run": dense_name, "pruning": r["pruning"],
                      "m1_dense": before and before["metrics"].get(m1.key),
                      "m1_after": r["metrics"].get(m1.key),
                      "m1_sparse": sparse and sparse["metrics"].get(m1.key),
                      "m0_after": r["metrics"].get(m0.key),
                      "m0_sparse": sparse and sparse["metrics"].get(m0.key)})
    cols = [("dense run", lambda r: r["run"]), ("then pruned", lambda r: r["pruning"]),
            (f"{m1.label}, unlearned dense", lambda r: r["m1_dense"]),
            ("after pruning", lambda r: r["m1_after"]),
            ("prune-then-unlearn", lambda r: r["m1_sparse"]),
            (f"{m0.short} after pruning", lambda r: r["m0_after"]),
            (f"{m0.short} prune-then-unlearn", lambda r: r["m0_sparse"])]
    return ["## Unlearn, then prune (does the forgotten data come back?)", "",
            "A dense model is unlearned and then pruned; beside it the same objective run on the model "
            "pruned first (prune-then-unlearn).", ""] + _table(table, cols) + [""]


# ----------------------------------------------------------------------------------------- plot
# (plain, SAU) colours per objective (and grid point); green is the retain model's
PAIRS = (("tab:blue", "tab:orange"), ("tab:purple", "tab:red"), ("tab:brown", "tab:pink"), ("tab:cyan", "tab:olive"),
         ("tab:gray", "black"))


def _seed_points(rows: list[dict], spec: ReportSpec, metric) -> dict[tuple, dict[float, list[tuple]]]:
    """Per method (of unlearning runs): learning rate -> [(metric value, utility)] over seeds."""
    out: dict[tuple, dict[float, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["reference"] or r.get("unlearn_then_prune") or r.get("attack_of"):
            continue
        out[method_key(r)][r["learning_rate"]].append(
            (metric_value(r["metrics"], metric.key, metric.log), r["metrics"].get(spec.utility)))
    return out


def _mean_sd(values: list) -> tuple[float | None, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, 0.0
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd


def plot_tradeoff(rows: list[dict], path: Path, band: float | tuple[float, float] = DEFAULT_BAND,
                  spec: ReportSpec = TOFU_REPORT, comparisons: list[dict] | None = None) -> None:
    """The trade-off curves: one column per pruning (dense, each sparse model), one row per forget metric; in each
    panel, per objective, plain (dashed, open markers) and SAU (solid) as mean curves over learning rates (each
    point labelled with its learning rate) with bars of one standard deviation over seeds on both axes; the
    start model (before unlearning) and the retain model as labelled markers; the comparisons' utility band (`band`:
    fractions of the panel's start model's utility; one number: a floor) as a shaded span, and inside it each
    method's frontier averaged over seeds (`report_plots.mean_frontier`: a thick step line, a diamond at a single
    floor), the line the verdicts are read on (on the band and points of `comparisons` where given).
    More forgetting is to the right in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .report_plots import mean_frontier, panel_band

    runs = [r for r in rows if not r["reference"] and not r.get("unlearn_then_prune") and not r.get("attack_of")]
    prunings = sorted({(r["pruning"], r["target_sparsity"]) for r in runs},
                      key=lambda p: (p[0] is not None, str(p[0]), p[1]))
    refs = {r["name"]: r for r in rows if r["reference"]}
    if not prunings:  # references only: one panel pair with them
        prunings = [(None, 0.0)]
    ncols = len(prunings)
    fig, axes = plt.subplots(2, ncols, figsize=(4.8 * ncols + 1.0, 8.6), squeeze=False)
    lo, hi = (band, band) if isinstance(band, int | float) else band
    variants = sorted({(k[3], k[6]) for k in {method_key(r) for r in runs}}, key=str)  # (objective, grid)
    colours = {(v, sau): PAIRS[i % len(PAIRS)][int(sau)] for i, v in enumerate(variants) for sau in (False, True)}
    n_seeds = max((len({r["seed"] for r in runs if method_key(r) == k}) for k in {method_key(r) for r in runs}),
                  default=0)
    handles: dict[str, Any] = {}
    for row_i, metric in enumerate(spec.forget):
        points = _seed_points(rows, spec, metric)
        for col, (pruning, sp) in enumerate(prunings):
            ax = axes[row_i][col]
            start = refs.get("finetuned" if pruning is None else
                             next((n for n, r in refs.items() if r["model"] == "finetuned" and r["pruning"] == pruning
                                   and r["target_sparsity"] == sp), "finetuned"))
            u0 = start["metrics"].get(spec.utility) if start is not None else None
            panel_runs = [r for r in runs if (r["pruning"], r["target_sparsity"]) == (pruning, sp)]
            read = panel_band(comparisons, pruning, sp) or (
                (lo * u0, hi * u0, bool(panel_runs) and all(r.get("trajectory") for r in panel_runs)) if u0 else None)
            for key, by_lr in sorted(points.items(), key=lambda kv: (str(kv[0][3]), str(kv[0][6]), kv[0][4])):
                if (key[1], key[2]) != (pruning, sp):
                    continue
                colour = colours[((key[3], key[6]), bool(key[4]))]
                xs, ys, xe, ye, lrs = [], [], [], [], []
                for lr in sorted(by_lr):
                    x, sx = _mean_sd([p[0] for p in by_lr[lr]])
                    y, sy = _mean_sd([p[1] for p in by_lr[lr]])
                    if x is None or y is None:
                        continue
                    xs.append(x), ys.append(y), xe.append(sx), ye.append(sy), lrs.append(lr)
                label = f"{objective_label(key[3])}{grid_label(dict(key[6]))} {'SAU' if key[4] else 'plain'}"
                h = ax.errorbar(xs, ys, xerr=xe, yerr=ye, color=colour, marker="o" if key[4] else "s",
                                markerfacecolor=colour if key[4] else "white", linestyle="-" if key[4] else "--",
                                markersize=5, lw=1.3, elinewidth=0.7, capsize=2, alpha=0.9, label=label)
                handles.setdefault(label, h)
                for x, y, lr in zip(xs, ys, lrs, strict=True):
                    ax.annotate(_short_lr(lr), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6,
                                color=colour)
                if read is not None:  # the frontier the verdicts read, inside the band
                    fu, fv = mean_frontier([r for r in panel_runs if method_key(r) == key], metric=metric.key,
                                           utility=spec.utility, log=metric.log, better=metric.better, lo=read[0],
                                           hi=read[1], trajectories_only=read[2])
                    flabel = "frontier over the band (mean over seeds): what the verdicts read"
                    if len(fu) > 1:
                        ax.plot(fv, fu, color=colour, lw=4.0, alpha=0.45, solid_capstyle="butt")
                        handles.setdefault(flabel, Line2D([], [], color="0.4", lw=4.0, alpha=0.45))
                    elif fu:
                        ax.plot(fv, fu, color=colour, marker="D", markersize=9, alpha=0.6, linestyle="none")
                        handles.setdefault("frontier at the floor (mean over seeds): what the verdicts read",
                                           Line2D([], [], color="0.4", marker="D", markersize=9, alpha=0.6,
                                                  linestyle="none"))
            for ref, marker, colour, label in ((start, "*", "black", "start model (before unlearning)"),
                                               (refs.get("retain"), "P", "tab:green", "retain model (never saw the "
                                                                                       "forget set)")):
                if ref is None:
                    continue
                x, y = metric_value(ref["metrics"], metric.key, metric.log), ref["metrics"].get(spec.utility)
                if x is None or y is None:
                    continue
                h = ax.plot([x], [y], marker=marker, color=colour, markersize=12, linestyle="none", label=label)[0]
                handles.setdefault(label, h)
                ax.annotate(ref["name"], (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7,
                            color=colour)
            if read is not None:  # the comparisons' band (from a trajectory's step-0 start where they used it)
                lo_abs, hi_abs = read[0], read[1]
                label = (f"utility floor ({lo:.0%} of the start model's)" if lo == hi else
                         f"utility band ({lo:.0%}-{hi:.0%} of the start model's)")
                handles.setdefault(label, ax.axhspan(lo_abs, hi_abs, color="grey", alpha=0.15, label=label)
                                   if hi_abs > lo_abs else ax.axhline(lo_abs, color="grey", lw=1.0, ls=":",
                                                                       label=label))
            if metric.better == "min":
                ax.invert_xaxis()
            ax.grid(alpha=0.3)
            if row_i == 0:
                ax.set_title("dense model" if pruning is None else f"{pruning} {sp:.0%}", fontsize=10)
            if col == 0:
                ax.set_ylabel(spec.utility_label)
            name = f"log10 {metric.label}" if metric.log else metric.label
            ax.set_xlabel(f"{name} ({'higher is better' if metric.better == 'max' else 'lower = more forgotten'}; "
                          "better to the right)", fontsize=8)
    seeds = f"mean over {n_seeds} seeds, bars: ±1 s.d." if n_seeds > 1 else "one seed"
    fig.suptitle(f"Forget / utility trade-off: each curve is one method over learning rates (numbers: lr; {seeds});\n"
                 "thick lines in the grey band: each method's frontier there (mean over seeds), what the verdicts "
                 "compare", fontsize=10)
    if handles:  # nothing drawn (rows without the metrics): no legend, which matplotlib refuses empty
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(handles) / 4), 1, 0.97))
    _save(fig, path)
