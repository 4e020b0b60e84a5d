"""The report of a run: ``report.json``, ``report.md`` and ``tradeoff.png`` at the top of the output directory.

One row per evaluated model. ``measured_sparsity`` is what the evaluation counted in the saved
weights it loaded (exact zeros over the prunable matrices), never the setting.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..data.benchmarks import TOFU_REPORT, ReportSpec, get_benchmark
from ..evaluation.results import load_results

ROW_KEYS = ("name", "model", "pruning", "target_sparsity", "measured_sparsity", "objective", "sau",
            "learning_rate", "seed", "metrics")
FQ_FLOOR = 1e-30  # forget quality 0 on a log axis is drawn here


def objective_label(name: Any) -> str:
    """The objective's display name (its class's `label`), else its registry name."""
    from ..objectives import OBJECTIVES

    cls = OBJECTIVES.get(name)
    return (cls.label if cls is not None else "") or str(name)


def build_report(rows: list[dict]) -> dict:
    """``{"runs": [...], "references": [...]}`` from rows that carry their metadata and metrics."""
    out: dict[str, list] = {"runs": [], "references": []}
    for r in rows:
        row = {k: r[k] for k in ROW_KEYS}
        if r.get("robustness"):  # evaluate.robustness: the attacked copies' summaries, by attack
            row["robustness"] = r["robustness"]
        out["references" if r["reference"] else "runs"].append(row)
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
        })
    from .robustness import fold_attacks

    return fold_attacks(rows)


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


def write_report(ctx, eval_tasks, pending: list[str] | None = None) -> dict:
    """Write the three report files into ``ctx.output_dir``; returns their paths. `pending`: evaluations not
    finished yet, listed under ``"pending"`` in report.json and at the end of report.md (only when there are)."""
    rows = collect_rows(ctx, eval_tasks)
    report = build_report(rows)
    if pending:
        report["pending"] = list(pending)
    out = ctx.output_dir
    _atomic_write(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    _atomic_write(out / "report.md", render_markdown(rows, ctx.recipe) + _pending_section(pending))
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if ctx.recipe.report.plot:
        plot_tradeoff(rows, out / "tradeoff.png", ctx.recipe.report.utility_fraction,
                      get_benchmark(ctx.recipe.data.benchmark).report)
        files["plot"] = str(out / "tradeoff.png")
    return files


# ----------------------------------------------------------------------------------------- methods
def method_key(row: dict) -> tuple:
    """Rows of one method differ only in learning rate and seed."""
    return (row["model"], row["pruning"], row["target_sparsity"], row["objective"], row["sau"],
            row.get("unlearn_then_prune", False))


def method_label(row: dict) -> str:
    obj = objective_label(row["objective"])
    obj += "+SAU" if row["sau"] else " plain"
    if row.get("unlearn_then_prune"):
        return f"dense {obj}, then {row['pruning']} {row['target_sparsity']:.0%}"
    where = "dense" if row["pruning"] is None else f"{row['pruning']} {row['target_sparsity']:.0%}"
    return f"{where} · {obj}"


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
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(rows: list[dict], columns: list[tuple[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(get(r)) for _, get in columns) + " |")
    return lines


def render_markdown(rows: list[dict], recipe) -> str:
    """report.md: references, runs, the matched-utility comparison and the unlearn-then-prune check."""
    m = recipe.model
    model = m.name_or_path or f"Llama built from shape {m.shape!r}"
    d = recipe.data
    spec = get_benchmark(d.benchmark).report
    generated = get_benchmark(d.benchmark).generated
    bench = f"{d.benchmark}" + (f" (preset {d.preset}, seed {d.seed})" if generated else "")
    bench += f", subset {d.subset}" if d.subset else ""
    split = f", forget split {d.forget_split}" if get_benchmark(d.benchmark).protocol == "tofu" else ""
    lines = [f"# {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += [f"- model: {model}", f"- benchmark: {bench}{split}",
              "- rows: `model` is what was unlearned (dense: the finetuned model; sparse: a pruned one) or the "
              "reference (finetuned, retain); `pruning` is the pruning of the evaluated weights (a dense run "
              "with a pruning was unlearned first, then pruned)",
              *[f"- {note}" for note in spec.notes], "- measured sparsity: exact zeros in the saved weights "
              "over the prunable matrices", "- tradeoff plot: tradeoff.png", ""]
    metric_cols = [(label, lambda r, k=key: r["metrics"].get(k)) for label, key in spec.columns]
    common = [("name", lambda r: r["name"]), ("pruning", lambda r: r["pruning"]),
              ("target sparsity", lambda r: r["target_sparsity"]),
              ("measured sparsity", lambda r: r["measured_sparsity"])]
    refs = [r for r in rows if r["reference"]]
    runs = [r for r in rows if not r["reference"]]
    lines += ["## References (before unlearning)", ""] + _table(refs, common + metric_cols) + [""]
    if runs:
        run_cols = common[:1] + [("model", lambda r: r["model"])] + common[1:] + [
            ("objective", lambda r: r["objective"]), ("SAU", lambda r: r["sau"]),
            ("lr", lambda r: r["learning_rate"]), ("seed", lambda r: r["seed"])]
        lines += ["## Unlearning runs", ""] + _table(runs, run_cols + metric_cols) + [""]
        lines += _matched_utility_section(rows, recipe.report.utility_fraction, spec)
        lines += _then_prune_section(runs, spec)
        from .robustness import markdown_section

        lines += markdown_section(rows, spec)
    return "\n".join(lines) + "\n"


def _best(points: list[dict], metric) -> dict | None:
    """The point with the most forgetting on `metric` (its `better` direction); None values lose."""
    if metric.better == "max":
        return max(points, key=lambda p: p[metric.key] or 0.0, default=None)
    return min(points, key=lambda p: math.inf if p[metric.key] is None else p[metric.key], default=None)


def _matched_utility_section(rows: list[dict], fraction: float, spec: ReportSpec = TOFU_REPORT) -> list[str]:
    base = next((r for r in rows if r["name"] == "finetuned"), None)
    if base is None or base["metrics"].get(spec.utility) is None:
        return []
    utility = base["metrics"][spec.utility]
    floor = fraction * utility
    table = []
    for points in curves(rows, spec).values():
        ok = [p for p in points if p[spec.utility] is not None and p[spec.utility] >= floor]
        row = {"label": points[0]["label"], "n": len(points), "ok": len(ok)}
        for i, metric in enumerate(spec.forget):
            best = _best(ok, metric)
            row[f"m{i}"], row[f"lr{i}"] = best and best[metric.key], best and best["learning_rate"]
        table.append(row)
    cols = [("method", lambda r: r["label"]), ("learning rates", lambda r: r["n"]),
            ("at utility ≥ floor", lambda r: r["ok"])]
    for i, metric in enumerate(spec.forget):
        cols += [(f"{'best' if metric.better == 'max' else 'lowest'} {metric.label}", lambda r, i=i: r[f"m{i}"]),
                 ("its lr", lambda r, i=i: r[f"lr{i}"])]
    whose = "model utility" if spec.utility == "model_utility" else spec.utility_label
    return [f"## At matched utility (≥ {fraction:.0%} of the finetuned model's {utility:.3f})"
            if whose == "model utility" else
            f"## At matched utility (≥ {fraction:.0%} of the finetuned model's {whose}, {utility:.3f})",
            "", "Metrics averaged over seeds per learning rate; a method is a curve over learning rates. "
            "Compare methods here, not on single runs.", ""] + _table(table, cols) + [""]


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
def plot_tradeoff(rows: list[dict], path: Path, utility_fraction: float = 0.9, spec: ReportSpec = TOFU_REPORT) -> None:
    """Utility against the benchmark's two forget metrics (TOFU: model utility against forget quality, log x,
    and against forget ROUGE); one marker per method, the learning rates of a method joined as a curve;
    references as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .robustness import plot_robustness, robustness_table

    if any(not t["skipped"] for t in robustness_table(rows, spec)):  # a third panel: robustness of forgetting
        fig = plt.figure(figsize=(13, 11))
        grid = fig.add_gridspec(2, 2, height_ratios=[1, 0.9])
        axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
        plot_robustness(fig.add_subplot(grid[1, :]), rows, spec)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    method_curves = curves(rows, spec)
    m0, m1 = spec.forget
    util_key = spec.utility

    def x0(value):
        return max(value or 0.0, FQ_FLOOR) if m0.log else value
    colour_keys = sorted({(k[1] or "", k[2], k[5]) for k in method_curves}, key=str)
    cmap = plt.get_cmap("tab10")
    colours = {ck: cmap(i % 10) for i, ck in enumerate(colour_keys)}
    objectives = sorted({k[3] for k in method_curves}, key=str)
    shapes = "osD^vP<>hX"
    markers = {o: shapes[i % len(shapes)] for i, o in enumerate(objectives)}
    for key, points in method_curves.items():
        colour = colours[(key[1] or "", key[2], key[5])]
        style = dict(marker=markers[key[3]], color=colour, linestyle="-" if key[4] else "--",
                     markerfacecolor=colour if key[4] else "white", markersize=7, label=points[0]["label"])
        util = [p[util_key] for p in points]
        axes[0].plot([x0(p[m0.key]) for p in points], util, **style)
        axes[1].plot([p[m1.key] for p in points], util, **{**style, "label": None})
    ref_colours = {"finetuned": "black", "retain": "tab:green"}
    for r in (r for r in rows if r["reference"]):
        size = 16 if r["pruning"] is None else 11
        kw = dict(marker="*", color=ref_colours.get(r["model"], "grey"), markersize=size, linestyle="none",
                  markeredgecolor="white" if r["pruning"] else ref_colours.get(r["model"], "grey"))
        axes[0].plot([x0(r["metrics"].get(m0.key))], [r["metrics"].get(util_key)], label=f"reference: {r['name']}",
                     **kw)
        axes[1].plot([r["metrics"].get(m1.key)], [r["metrics"].get(util_key)], **kw)
    base = next((r for r in rows if r["name"] == "finetuned"), None)
    for ax in axes:
        if base is not None and base["metrics"].get(util_key) is not None:
            ax.axhline(utility_fraction * base["metrics"][util_key], color="grey", lw=0.8, ls=":")
        ax.set_ylabel(spec.utility_label)
        ax.grid(alpha=0.3)
    for ax, metric in zip(axes, spec.forget, strict=True):
        if metric.log:
            ax.set_xscale("log")
        ax.set_xlabel(metric.axis or f"{metric.label} ({'higher' if metric.better == 'max' else 'lower'} is better)")
        if metric.better == "min":
            ax.invert_xaxis()
    fig.suptitle("Forget / utility trade-off: each curve is one method over learning rates "
                 f"(dotted: {utility_fraction:.0%} of the finetuned utility)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
