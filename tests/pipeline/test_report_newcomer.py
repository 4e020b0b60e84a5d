"""report.md read as a newcomer would, on hand-made rows: learning rates printed so distinct rates stay distinct, a
robustness share that agrees with the columns beside it, a bottom line that says when the forget metrics disagree,
and each comparison's resolution stated, with a continuous metric compared beside forget quality."""

import pytest

from sau_trainer.data.benchmarks import BENCHMARKS, TOFU_REPORT
from sau_trainer.pipeline import validate
from sau_trainer.pipeline.report import lr_text, render_markdown
from sau_trainer.pipeline.report_plots import mean_frontier
from sau_trainer.pipeline.report_summary import agreement, bottom_line, continuous_companion
from sau_trainer.pipeline.report_verdicts import band_comparisons
from sau_trainer.pipeline.resolution import RESOLUTIONS
from sau_trainer.pipeline.robustness import robustness_table

RECIPE = validate({"name": "newcomer", "model": {"shape": "tiny"}})


def ref(name, utility, rouge=1.0, pruning=None):
    return {"name": name, "model": "finetuned", "pruning": pruning, "target_sparsity": 0.5 if pruning else 0.0,
            "measured_sparsity": 0.5 if pruning else 0.0, "objective": None, "sau": False, "learning_rate": None,
            "seed": 0, "reference": True, "metrics": {"model_utility": utility, "forget_rouge": rouge,
                                                       "forget_quality": 1e-6}}


def run(sau, seed, lr, utility, rouge, fq=0.1, pruning="magnitude", n_forget=20):
    r = {"name": f"{pruning or 'dense'}-npo-{'sau' if sau else 'plain'}-lr{lr}-s{seed}",
         "model": "sparse" if pruning else "dense", "pruning": pruning, "target_sparsity": 0.5 if pruning else 0.0,
         "measured_sparsity": 0.5 if pruning else 0.0, "objective": "npo", "sau": sau, "learning_rate": lr,
         "seed": seed, "reference": False, "metrics": {"model_utility": utility, "forget_rouge": rouge,
                                                       "forget_quality": fq}}
    if n_forget is not None:
        r["n_forget"] = n_forget
    return r


REFS = [ref("finetuned", 1.0), ref("finetuned+magnitude-50", 0.6, pruning="magnitude")]


def sau_vs_plain(sau_fq, plain_fq, n_forget=20):
    """SAU against plain on the 50% model (band [0.51, 0.57]: only the lr 1e-4 points, utility 0.58, cover it): SAU
    has the lower forget ROUGE on every seed (0.5, 0.48, 0.52 against 0.6); forget quality per seed as given."""
    rows = list(REFS)
    for s in range(3):
        rows += [run(True, s, 1e-4, 0.58, (0.5, 0.48, 0.52)[s], sau_fq[s], n_forget=n_forget),
                 run(False, s, 1e-4, 0.58, 0.6, plain_fq[s], n_forget=n_forget),
                 run(True, s, 1.2e-3, 0.45, 0.2, n_forget=n_forget), run(False, s, 1.2e-3, 0.45, 0.3, n_forget=n_forget)]
    return rows


def opening(md):
    return md[md.index("## What this run shows"):md.index("## How to read this report")]


# ----------------------------------------------------------------------------------------- a. learning rates
def test_the_runs_table_prints_learning_rates_that_stay_distinct():
    rows = sau_vs_plain((0.1,) * 3, (0.1,) * 3)
    rows.append(run(False, 0, 1e-3, 0.5, 0.3))  # 1e-3 beside 1.2e-3: printed 0.001 both (3 decimals) before
    md = render_markdown(rows, RECIPE)
    runs = md[md.index("## Unlearning runs"):]
    assert "| 0.0012 | 0 |" in runs and "| 0.001 | 0 |" in runs and "| 0.0001 | 0 |" in runs
    assert [lr_text(x) for x in (1.2e-3, 1e-3, 4.5e-5, 3e-4, None)] == ["0.0012", "0.001", "4.5e-05", "0.0003", "–"]
    for x in (1.2e-3, 1.25e-3, 1.2500001e-3, 7e-6):
        assert float(lr_text(x)) == x  # reads back as the same rate


# ----------------------------------------------------------------------------------------- b. forgetting undone
def attacked_rows():
    """Four dense NPO runs attacked by relearning; the start model's forget ROUGE 0.9637. One run forgot almost
    nothing (0.9637 -> 0.9537) and the attack lowered it a little more (0.9479: its own ratio -58%); the other three
    went 0.0781 -> 0.09337 (+1.7% each). Means: unlearned 0.297, attacked 0.307 (the issue's numbers)."""
    rows = [ref("finetuned", 1.0, rouge=0.9637), ref("retain", 0.9, rouge=0.3)]
    rows[1]["model"] = "retain"
    for i, (before, after) in enumerate([(0.9537, 0.9479)] + [(0.0781, 0.28011 / 3)] * 3):
        r = run(False, i, 1e-4, 0.6, before, pruning=None)
        r["robustness"] = {"relearn": {"model_utility": 0.6, "forget_rouge": after, "forget_quality": 0.01}}
        rows.append(r)
    return rows


def test_forgetting_undone_is_a_ratio_of_means_whose_sign_agrees_with_the_columns():
    rows = attacked_rows()
    t = robustness_table(rows, TOFU_REPORT)[0]
    assert t["before1"] == pytest.approx(0.297, abs=1e-5) and t["after1"] == pytest.approx(0.307, abs=1e-5)
    assert t["undone"] == pytest.approx(0.015, abs=1e-4)  # (0.307 - 0.297) / (0.9637 - 0.297): +1.5%, not -13%
    per_run = [(a - b) / (0.9637 - b) for b, a in [(0.9537, 0.9479)] + [(0.0781, 0.28011 / 3)] * 3]
    assert sum(per_run) / 4 == pytest.approx(-0.132, abs=1e-3)  # the former mean of per-run ratios: wrong sign
    md = render_markdown(rows, RECIPE)
    section = md[md.index("## Robustness of forgetting"):]
    assert "forgetting undone (ratio of means)" in section and "a ratio of means" in section
    line = next(ln for ln in section.splitlines() if "| relearn |" in ln)
    assert "| 0.297 | 0.307 | 1.5% |" in line and "-13%" not in line


# ----------------------------------------------------------------------------------------- e. the bottom line
def test_when_the_forget_metrics_disagree_the_bottom_line_says_so():
    # forget ROUGE favours SAU; forget quality favours plain (0.01-0.012 against 0.3 on every seed)
    rows = sau_vs_plain((0.01, 0.011, 0.012), (0.3, 0.3, 0.3))
    cs = band_comparisons(rows, TOFU_REPORT)
    assert {c["metric"]: c["verdict"] for c in cs} == {"forget_quality_log10": "worse", "forget_rouge": "better"}
    assert agreement(cs) == "disagree"
    text = opening(render_markdown(rows, RECIPE))
    first = text.split("\n\n")[1]  # the first paragraph after the heading
    assert first.startswith("**Bottom line:** SAU against plain, NPO, magnitude 50% model: the metrics disagree "
                            "(forget quality (log10) favours plain, forget ROUGE favours SAU), so no conclusion.")
    assert "**The forget metrics disagree** (forget quality (log10) favours plain; forget ROUGE favours SAU)" in text


def test_when_the_forget_metrics_agree_the_bottom_line_names_the_side():
    rows = sau_vs_plain((0.5, 0.55, 0.6), (0.1, 0.1, 0.1))
    text = opening(render_markdown(rows, RECIPE))
    assert "**Bottom line:** SAU against plain, NPO, magnitude 50% model: both forget metrics favour SAU." in text
    assert "The forget metrics agree: all favour SAU." in text


def test_agreement_of_hand_made_verdicts():
    def c(verdict, fragile=False):
        return {"a": "sau", "b": "plain", "metric": "m", "verdict": verdict, "fragile": fragile}

    assert agreement([c("better"), c("better", True)]) == "agree"
    assert agreement([c("worse"), c("better")]) == "disagree"
    assert agreement([c("worse"), c("inconclusive")]) == "partial"
    assert agreement([c("inconclusive"), c("inconclusive")]) == "none"
    line = bottom_line([("x", [c("worse", True), c("inconclusive")]), ("y", [c("inconclusive")] * 2)])
    assert line == ("**Bottom line:** x: only m reaches a verdict (favouring plain, fragile), m is inconclusive; "
                    "y: no verdict on any forget metric.")


# ----------------------------------------------------------------------------------------- g. resolution
def test_each_comparison_line_says_when_one_step_is_larger_than_the_difference():
    # forget quality 0.336 / 0.175 / 0.175 against 0.175: neighbouring KS values of 20 vs 20 (0.28 apart in log10);
    # the mean difference, 0.094, is a third of one step (0.284 near the sides' mean, -0.71)
    rows = sau_vs_plain((0.336, 0.175, 0.175), (0.175, 0.175, 0.175))
    fq = next(c for c in band_comparisons(rows, TOFU_REPORT) if c["metric"] == "forget_quality_log10")
    assert fq["resolution"]["diff_below_step"] is True and fq["diff_mean"] == pytest.approx(0.0942, abs=1e-3)
    text = opening(render_markdown(rows, RECIPE))
    assert ("**one step of this metric (0.284) is larger than the difference (0.094)**: the difference is smaller "
            "than one forget example changing rank") in text
    assert "resolution: mean over 20 examples" in text  # forget ROUGE, the continuous companion, says its own
    assert "Forget quality moves in steps (its resolution is stated with each comparison); forget ROUGE, a " \
        "continuous mean over the forget examples, is compared beside it" in text


def test_a_comparison_without_the_forget_sets_size_says_its_resolution_is_not_known():
    rows = sau_vs_plain((0.1,) * 3, (0.1,) * 3, n_forget=None)
    text = opening(render_markdown(rows, RECIPE))
    bullet = next(ln for ln in text.splitlines() if ln.startswith("- **SAU against plain**"))
    assert bullet.count("resolution: not known") == 2  # one per metric


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_compares_a_continuous_metric_beside_a_stepped_one(name):
    spec = BENCHMARKS[name].report
    companion = continuous_companion(spec)
    assert companion is not None and RESOLUTIONS[companion] == "mean"
    assert companion in [m.key for m in spec.forget]  # band_comparisons reads every forget metric of the spec


# ----------------------------------------------------------------------------------------- d. tradeoff.png
def capture(monkeypatch, module):
    figs = []

    def keep(fig, path):
        figs.append(fig)

    monkeypatch.setattr(module, "_save", keep)
    return figs


def test_mean_frontier_is_the_step_function_the_verdicts_integrate():
    rows = [run(True, s, lr, u, v) for s in range(2) for lr, u, v in ((1e-4, 0.58, 0.5 + 0.1 * s), (3e-4, 0.53, 0.35))]
    us, vs = mean_frontier(rows, metric="forget_rouge", utility="model_utility", log=False, better="min", lo=0.51,
                           hi=0.57, n=7)
    assert us == pytest.approx([0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57])
    # at u <= 0.53 both seeds reach 0.35; above, only the lr 1e-4 points: 0.5 and 0.6, mean 0.55
    assert vs == pytest.approx([0.35, 0.35, 0.35, 0.55, 0.55, 0.55, 0.55])
    us, _ = mean_frontier(rows, metric="forget_rouge", utility="model_utility", log=False, better="min", lo=0.51,
                          hi=0.60, n=10)
    assert max(us) <= 0.58 + 1e-12  # above the best utility the frontier is undefined: not drawn


def test_tradeoff_marks_each_methods_frontier_inside_the_band(monkeypatch, tmp_path):
    from sau_trainer.pipeline import report

    figs = capture(monkeypatch, report)
    rows = sau_vs_plain((0.1,) * 3, (0.1,) * 3)
    report.plot_tradeoff(rows, tmp_path / "t.png", (0.85, 0.95), TOFU_REPORT, band_comparisons(rows, TOFU_REPORT))
    rouge_ax = figs[0].axes[1]  # second row: forget ROUGE
    thick = [ln for ln in rouge_ax.get_lines() if ln.get_linewidth() == 4.0]
    # band [0.51, 0.57] x the pruned model's 0.6; inside it only the lr 1e-4 points (utility 0.58) count: SAU's
    # frontier is the mean of 0.5 / 0.48 / 0.52, plain's 0.6, at every utility of the band
    assert sorted(round(set(ln.get_xdata()).pop(), 6) for ln in thick) == [0.5, 0.6]
    for ln in thick:
        assert min(ln.get_ydata()) == pytest.approx(0.51) and max(ln.get_ydata()) == pytest.approx(0.57)
    legend = [t.get_text() for t in figs[0].legends[0].get_texts()]
    assert "frontier over the band (mean over seeds): what the verdicts read" in legend


# ----------------------------------------------------------------------------------------- c. robustness.png
def matched_rows():
    """Dense NPO plain and SAU, 3 seeds; start utility 1.0, band [0.85, 0.95]. Per seed a run in the band (utility
    0.9) and one that broke the model (0.3, forget ROUGE 0.0, relearned to 0.9): averaging over all learning rates
    mixes them."""
    rows = [ref("finetuned", 1.0, rouge=1.0)]
    for sau in (False, True):
        for s in range(3):
            base = 0.4 if not sau else 0.2
            good = run(sau, s, 1e-4, 0.9, base + 0.02 * s, pruning=None)
            good["robustness"] = {"relearn": {"model_utility": 0.9, "forget_rouge": base + 0.1 + 0.04 * s}}
            broke = run(sau, s, 1e-3, 0.3, 0.0, pruning=None)
            broke["robustness"] = {"relearn": {"model_utility": 0.3, "forget_rouge": 0.9}}
            rows += [good, broke]
    return rows


def test_robustness_plot_compares_runs_at_matched_utility_with_error_bars_over_seeds(monkeypatch, tmp_path):
    from sau_trainer.pipeline import report, robustness_report
    from sau_trainer.pipeline.robustness import matched_runs

    rows = matched_rows()
    chosen = matched_runs(rows, TOFU_REPORT, (0.85, 0.95))
    assert {m: sorted(r["learning_rate"] for r in rs) for m, rs in chosen.items()} == {
        "dense · NPO plain": [1e-4] * 3, "dense · NPO+SAU": [1e-4] * 3}
    figs = capture(monkeypatch, robustness_report)
    assert report.plot_robustness_figure(rows, tmp_path / "r.png", TOFU_REPORT, (0.85, 0.95))
    ax = figs[0].axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    # unlearned: 0.42 (plain: 0.4, 0.42, 0.44) and 0.22 (SAU); after relearning: 0.54 and 0.34; the broken runs
    # (0.0 -> 0.9) are not in them
    assert heights == [0.22, 0.34, 0.42, 0.54]
    caps = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    sds = sorted(round(float(seg[1][1] - seg[0][1]) / 2, 6) for c in caps for seg in c.errorbar.lines[2][0].get_segments())
    assert sds == pytest.approx(sorted([0.02, 0.02, 0.04, 0.04]))  # ±1 s.d. over seeds
    assert "error bars: ±1 s.d. over seeds" in ax.get_title()
    md = render_markdown(rows, RECIPE)
    assert "robustness.png compares the methods at matched utility" in md
    assert "dense · NPO plain: 3 run(s) in the band" in md


def test_tradeoff_frontier_uses_the_trajectory_points_when_the_comparisons_do(monkeypatch, tmp_path):
    from sau_trainer.pipeline import report

    rows = list(REFS)
    for s in range(3):  # the final metrics (plain: forget ROUGE 0.0 at utility 0.59) must not enter the frontier
        sau = run(True, s, 1e-4, 0.3, 0.9)
        sau["trajectory"] = [{"step": t, "model_utility": u, "forget_rouge": v, "forget_quality": 0.1}
                             for t, u, v in ((0, 0.62, 1.0), (5, 0.60, 0.4 + 0.01 * s), (10, 0.5, 0.1))]
        plain = run(False, s, 1e-4, 0.59, 0.0)
        plain["trajectory"] = [{"step": t, "model_utility": u, "forget_rouge": v, "forget_quality": 0.1}
                               for t, u, v in ((0, 0.62, 1.0), (5, 0.60, 0.7), (10, 0.5, 0.2))]
        rows += [sau, plain]
    cs = band_comparisons(rows, TOFU_REPORT)
    assert {c["points"] for c in cs} == {"trajectories"}
    figs = capture(monkeypatch, report)
    report.plot_tradeoff(rows, tmp_path / "t.png", (0.85, 0.95), TOFU_REPORT, cs)
    thick = [ln for ln in figs[0].axes[1].get_lines() if ln.get_linewidth() == 4.0]
    # band [0.527, 0.589] from the step-0 utility 0.62: SAU's step-5 values (mean 0.41), plain's 0.7
    assert sorted(round(set(ln.get_xdata()).pop(), 6) for ln in thick) == [0.41, 0.7]
    assert min(thick[0].get_ydata()) == pytest.approx(0.85 * 0.62)
