"""The report of a run: ``report.json``, ``report.md`` and ``tradeoff.png`` at the top of the output directory.

One row per evaluated model. ``measured_sparsity`` is what the evaluation counted in the saved
weights it loaded (exact zeros over the prunable matrices), never the setting.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

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
        out["references" if r["reference"] else "runs"].append({k: r[k] for k in ROW_KEYS})
    return out


def collect_rows(ctx, eval_tasks) -> list[dict]:
    """Report rows from the evaluation tasks' metadata and their results.json files."""
    rows = []
    for t in eval_tasks:
        results = load_results(ctx.task_dir(t.name))
        m = t.meta
        rows.append({
            "name": m["name"], "model": m["model"], "pruning": m["pruning"],
            "target_sparsity": float(m["target_sparsity"]),
            "measured_sparsity": float(results["model"]["measured_sparsity"]),
            "objective": m["objective"], "sau": bool(m["sau"]), "learning_rate": m["learning_rate"],
            "seed": int(m["seed"]), "metrics": results["summary"], "reference": bool(m["reference"]),
            "unlearn_then_prune": bool(m.get("unlearn_then_prune")), "model_dir": m.get("model_dir"),
        })
    return rows


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def write_report(ctx, eval_tasks) -> dict:
    """Write the three report files into ``ctx.output_dir``; returns their paths."""
    rows = collect_rows(ctx, eval_tasks)
    report = build_report(rows)
    out = ctx.output_dir
    _atomic_write(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    _atomic_write(out / "report.md", render_markdown(rows, ctx.recipe))
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if ctx.recipe.report.plot:
        plot_tradeoff(rows, out / "tradeoff.png", ctx.recipe.report.utility_fraction)
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


def curves(rows: list[dict]) -> dict[tuple, list[dict]]:
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
                           **{k: _mean([g["metrics"].get(k) for g in group])
                              for k in ("forget_quality", "model_utility", "forget_rouge",
                                        "forget_quality_pruned_retain")}})
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
    bench = f"{d.benchmark}" + (f" (preset {d.preset}, seed {d.seed})" if d.benchmark == "synthetic" else "")
    lines = [f"# {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += [f"- model: {model}", f"- benchmark: {bench}, forget split {d.forget_split}",
              "- rows: `model` is what was unlearned (dense: the finetuned model; sparse: a pruned one) or the "
              "reference (finetuned, retain); `pruning` is the pruning of the evaluated weights (a dense run "
              "with a pruning was unlearned first, then pruned)",
              "- forget quality: KS-test p-value against the dense retain model; FQ (pruned retain): against "
              "the retain model pruned the same way", "- measured sparsity: exact zeros in the saved weights "
              "over the prunable matrices", "- tradeoff plot: tradeoff.png", ""]
    metric_cols = [
        ("forget quality", lambda r: r["metrics"].get("forget_quality")),
        ("FQ (pruned retain)", lambda r: r["metrics"].get("forget_quality_pruned_retain")),
        ("model utility", lambda r: r["metrics"].get("model_utility")),
        ("forget ROUGE", lambda r: r["metrics"].get("forget_rouge")),
        ("forget prob.", lambda r: r["metrics"].get("forget_probability")),
        ("extraction strength", lambda r: r["metrics"].get("extraction_strength")),
        ("retain ROUGE", lambda r: r["metrics"].get("retain_rouge")),
    ]
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
        lines += _matched_utility_section(rows, recipe.report.utility_fraction)
        lines += _then_prune_section(runs)
    return "\n".join(lines) + "\n"


def _matched_utility_section(rows: list[dict], fraction: float) -> list[str]:
    base = next((r for r in rows if r["name"] == "finetuned"), None)
    if base is None:
        return []
    floor = fraction * base["metrics"]["model_utility"]
    table = []
    for points in curves(rows).values():
        ok = [p for p in points if p["model_utility"] is not None and p["model_utility"] >= floor]
        best_fq = max(ok, key=lambda p: p["forget_quality"] or 0.0, default=None)
        best_rouge = min(ok, key=lambda p: p["forget_rouge"], default=None)
        table.append({"label": points[0]["label"], "n": len(points), "ok": len(ok),
                      "fq": best_fq and best_fq["forget_quality"], "fq_lr": best_fq and best_fq["learning_rate"],
                      "rouge": best_rouge and best_rouge["forget_rouge"],
                      "rouge_lr": best_rouge and best_rouge["learning_rate"]})
    cols = [("method", lambda r: r["label"]), ("learning rates", lambda r: r["n"]),
            ("at utility ≥ floor", lambda r: r["ok"]), ("best forget quality", lambda r: r["fq"]),
            ("its lr", lambda r: r["fq_lr"]), ("lowest forget ROUGE", lambda r: r["rouge"]),
            ("its lr", lambda r: r["rouge_lr"])]
    return [f"## At matched utility (≥ {fraction:.0%} of the finetuned model's {base['metrics']['model_utility']:.3f})",
            "", "Metrics averaged over seeds per learning rate; a method is a curve over learning rates. "
            "Compare methods here, not on single runs.", ""] + _table(table, cols) + [""]


def _then_prune_section(runs: list[dict]) -> list[str]:
    after = [r for r in runs if r.get("unlearn_then_prune")]
    if not after:
        return []
    by_name = {r["name"]: r for r in runs}
    table = []
    for r in after:
        dense_name = r["name"].rsplit("+", 1)[0]
        before = by_name.get(dense_name)
        sparse_name = f"{r['name'].rsplit('+', 1)[1]}-{dense_name.split('-', 1)[1]}"
        sparse = by_name.get(sparse_name)
        table.append({"run": dense_name, "pruning": r["pruning"],
                      "rouge_dense": before and before["metrics"]["forget_rouge"],
                      "rouge_after": r["metrics"]["forget_rouge"],
                      "rouge_sparse": sparse and sparse["metrics"]["forget_rouge"],
                      "fq_after": r["metrics"].get("forget_quality"),
                      "fq_sparse": sparse and sparse["metrics"].get("forget_quality")})
    cols = [("dense run", lambda r: r["run"]), ("then pruned", lambda r: r["pruning"]),
            ("forget ROUGE, unlearned dense", lambda r: r["rouge_dense"]),
            ("after pruning", lambda r: r["rouge_after"]),
            ("prune-then-unlearn", lambda r: r["rouge_sparse"]),
            ("FQ after pruning", lambda r: r["fq_after"]), ("FQ prune-then-unlearn", lambda r: r["fq_sparse"])]
    return ["## Unlearn, then prune (does the forgotten data come back?)", "",
            "A dense model is unlearned and then pruned; beside it the same objective run on the model "
            "pruned first (prune-then-unlearn).", ""] + _table(table, cols) + [""]


# ----------------------------------------------------------------------------------------- plot
def plot_tradeoff(rows: list[dict], path: Path, utility_fraction: float = 0.9) -> None:
    """Model utility against forget quality (log x) and against forget ROUGE; one marker per method,
    the learning rates of a method joined as a curve; references as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    method_curves = curves(rows)
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
        util = [p["model_utility"] for p in points]
        fq = [max(p["forget_quality"] or 0.0, FQ_FLOOR) for p in points]
        axes[0].plot(fq, util, **style)
        axes[1].plot([p["forget_rouge"] for p in points], util, **{**style, "label": None})
    ref_colours = {"finetuned": "black", "retain": "tab:green"}
    for r in (r for r in rows if r["reference"]):
        size = 16 if r["pruning"] is None else 11
        kw = dict(marker="*", color=ref_colours.get(r["model"], "grey"), markersize=size, linestyle="none",
                  markeredgecolor="white" if r["pruning"] else ref_colours.get(r["model"], "grey"))
        fq = max(r["metrics"].get("forget_quality") or 0.0, FQ_FLOOR)
        axes[0].plot([fq], [r["metrics"]["model_utility"]], label=f"reference: {r['name']}", **kw)
        axes[1].plot([r["metrics"]["forget_rouge"]], [r["metrics"]["model_utility"]], **kw)
    base = next((r for r in rows if r["name"] == "finetuned"), None)
    for ax in axes:
        if base is not None:
            ax.axhline(utility_fraction * base["metrics"]["model_utility"], color="grey", lw=0.8, ls=":")
        ax.set_ylabel("model utility")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("forget quality (KS p-value vs retain model, log; higher is better)")
    axes[1].set_xlabel("forget ROUGE-L recall (lower is better)")
    axes[1].invert_xaxis()
    fig.suptitle("Forget / utility trade-off: each curve is one method over learning rates "
                 f"(dotted: {utility_fraction:.0%} of the finetuned utility)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
