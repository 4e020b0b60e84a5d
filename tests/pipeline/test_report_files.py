"""report.json keys, report.md sections and tradeoff.png from hand-made rows (no models)."""

import json
from types import SimpleNamespace

from sau_trainer.pipeline import validate
from sau_trainer.pipeline.report import (
    ROW_KEYS,
    build_report,
    curves,
    plot_robustness_figure,
    plot_tradeoff,
    render_markdown,
)


def row(name, model, pruning=None, objective=None, sau=False, lr=None, fq=0.5, mu=0.6, rouge=0.5, ref=False,
        then_prune=False, seed=0):
    return {"name": name, "model": model, "pruning": pruning, "target_sparsity": 0.5 if pruning else 0.0,
            "measured_sparsity": 0.5 if pruning else 0.0, "objective": objective, "sau": sau, "learning_rate": lr,
            "seed": seed, "reference": ref, "unlearn_then_prune": then_prune,
            "metrics": {"forget_quality": fq, "model_utility": mu, "forget_rouge": rouge, "forget_probability": 0.3,
                        "extraction_strength": 0.2, "retain_rouge": 0.9}}


ROWS = [
    row("retain", "retain", ref=True, fq=1.0, mu=0.62, rouge=0.3),
    row("finetuned", "finetuned", ref=True, fq=1e-6, mu=0.66, rouge=1.0),
    row("finetuned+magnitude-50", "finetuned", "magnitude", ref=True, fq=1e-6, mu=0.6, rouge=0.95),
    row("dense-npo-sau-lr0.001-s0", "dense", None, "npo", True, 1e-3, fq=0.1, mu=0.61, rouge=0.3),
    row("dense-npo-sau-lr0.001-s1", "dense", None, "npo", True, 1e-3, fq=0.3, mu=0.59, rouge=0.2, seed=1),
    row("dense-npo-sau-lr0.0001-s0", "dense", None, "npo", True, 1e-4, fq=0.001, mu=0.65, rouge=0.8),
    row("magnitude-50-npo-plain-lr0.001-s0", "sparse", "magnitude", "npo", False, 1e-3, fq=0.0, mu=0.5, rouge=0.4),
    row("dense-npo-sau-lr0.001-s0+magnitude-50", "dense", "magnitude", "npo", True, 1e-3, fq=0.01, mu=0.55,
        rouge=0.6, then_prune=True),
]


def test_report_json_has_exactly_the_specified_keys():
    report = build_report(ROWS)
    assert set(report) == {"runs", "references"}
    assert [r["name"] for r in report["references"]] == ["retain", "finetuned", "finetuned+magnitude-50"]
    assert len(report["runs"]) == 5
    for r in report["runs"] + report["references"]:
        assert tuple(r) == ROW_KEYS
    json.dumps(report, allow_nan=False)


def test_curves_average_seeds_and_sort_by_learning_rate():
    c = curves(ROWS)
    dense_sau = next(v for k, v in c.items() if k[0] == "dense" and k[1] is None)
    assert [p["learning_rate"] for p in dense_sau] == [1e-4, 1e-3]
    assert dense_sau[1]["n_seeds"] == 2 and abs(dense_sau[1]["forget_quality"] - 0.2) < 1e-12
    assert len(c) == 3  # dense SAU, magnitude plain, dense-then-magnitude


def test_markdown_and_plot(tmp_path):
    recipe = validate({"name": "demo", "model": {"shape": "tiny"}, "description": "a test"})
    md = render_markdown(ROWS, recipe)
    for heading in ("# demo", "## What this run shows", "## How to read this report", "## References",
                    "## Unlearning runs", "## Unlearn, then prune"):
        assert heading in md
    assert md.index("## What this run shows") < md.index("## How to read this report") < md.index("## References")
    for column in ("model utility", "forget quality", "forget ROUGE", "extraction strength", "retain ROUGE"):
        assert f"- **{column}**: " in md  # every metric column is defined, with its direction
    assert "Lower is more forgotten" in md and "Higher is better" in md
    assert "| dense-npo-sau-lr0.001-s0 | dense | – | 0.000 | 0.000 | npo | yes | 0.001 | 0 |" in md
    path = tmp_path / "tradeoff.png"
    plot_tradeoff(ROWS, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp*"))
    assert plot_robustness_figure(ROWS, tmp_path / "robustness.png")  # the unlearn-then-prune row has its figure
    assert (tmp_path / "robustness.png").stat().st_size > 10_000
    assert not plot_robustness_figure(ROWS[:6], tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_write_report_reads_results_files(tmp_path):
    from sau_trainer.evaluation.results import save_results
    from sau_trainer.pipeline.report import write_report

    tasks = []
    for r in ROWS[:4]:
        d = tmp_path / "stages" / "eval" / r["name"]
        save_results({"summary": r["metrics"], "model": {"measured_sparsity": r["measured_sparsity"]},
                      "per_example": {"forget": {"log_truth_ratio": [0.0]}}}, d)
        meta = {k: r[k] for k in ("name", "model", "pruning", "target_sparsity", "objective", "sau",
                                  "learning_rate", "seed")}
        tasks.append(SimpleNamespace(name=f"eval/{r['name']}", meta={**meta, "reference": r["reference"]}))
    ctx = SimpleNamespace(output_dir=tmp_path, recipe=validate({"model": {"shape": "tiny"}}),
                          task_dir=lambda n: tmp_path / "stages" / n)
    files = write_report(ctx, tasks)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["dense-npo-sau-lr0.001-s0"]
    assert report["references"][2]["measured_sparsity"] == 0.5
    assert set(files) == {"json", "markdown", "plot"}
    assert report["comparisons"] == []  # one method only: nothing to compare


def test_the_demo_recipe_is_sized_for_verdicts():
    """SPEC section 7 needs >= 3 seeds per curve; forget quality over 40 truth ratios takes far more values than
    over 20 (the issue: 8 values over 120 runs)."""
    from pathlib import Path

    from sau_trainer.data.benchmarks import load_benchmark
    from sau_trainer.pipeline.schema import load_recipe
    from sau_trainer.pipeline.stages import plan

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes/demo.yaml")
    u, d = recipe.unlearn, recipe.data
    assert len(u.seed) >= 3 and len(u.learning_rate) >= 4 and u.sau == [False, True]
    data = load_benchmark(d.benchmark, preset=d.preset, seed=d.seed)
    assert len(data[d.forget_split]) >= 40 and len(data[f"{d.forget_split}_perturbed"]) >= 40
    runs = [t for t in plan(recipe) if t.kind == "unlearn"]
    per_method = {}
    for t in runs:
        s = t.settings
        per_method.setdefault((s["source"], s["objective"], s["sau"]), set()).add((s["learning_rate"], s["seed"]))
    assert len(per_method) == 2 * len(u.objective) * (1 + len(recipe.prune.method))
    assert all(len(points) == len(u.seed) * len(u.learning_rate) for points in per_method.values())
