"""The report's comparisons over a utility band (SPEC section 7, `pipeline.report_verdicts`) on hand-made rows: floors
relative to each comparison's own starting model, trajectory points only when runs have trajectories, the former
utility_fraction as a band of width 0, fragile verdicts stated as such, the metric's resolution; the recipe keys."""

import math

import pytest

from sau_trainer.data.benchmarks import TOFU_REPORT
from sau_trainer.pipeline import validate
from sau_trainer.pipeline.comparisons import report_comparisons
from sau_trainer.pipeline.report import build_report, render_markdown
from sau_trainer.pipeline.report_verdicts import band_comparisons, recipe_band, start_reference
from sau_trainer.pipeline.schema import RecipeError

T2 = 4.302652729749464  # t_{0.975, 2}


def ci3(diffs):
    m = sum(diffs) / 3
    half = T2 * math.sqrt(sum((d - m) ** 2 for d in diffs) / 2) / math.sqrt(3)
    return m, [m - half, m + half]


def ref(name, utility, pruning=None):
    return {"name": name, "model": "finetuned", "pruning": pruning, "target_sparsity": 0.5 if pruning else 0.0,
            "measured_sparsity": 0.5 if pruning else 0.0, "objective": None, "sau": False, "learning_rate": None,
            "seed": 0, "reference": True, "metrics": {"model_utility": utility, "forget_rouge": 1.0,
                                                       "forget_quality": 1e-6}}


def run(sau, seed, lr, utility, rouge, fq=0.1, trajectory=None, pruning="magnitude"):
    r = {"name": f"{pruning or 'dense'}-npo-{'sau' if sau else 'plain'}-lr{lr}-s{seed}",
         "model": "sparse" if pruning else "dense", "pruning": pruning, "target_sparsity": 0.5 if pruning else 0.0,
         "measured_sparsity": 0.5 if pruning else 0.0, "objective": "npo", "sau": sau, "learning_rate": lr,
         "seed": seed, "reference": False, "n_forget": 20,
         "metrics": {"model_utility": utility, "forget_rouge": rouge, "forget_quality": fq}}
    if trajectory is not None:
        r["trajectory"] = [{"step": s, "model_utility": u, "forget_rouge": v, "forget_quality": fq}
                           for s, u, v in trajectory]
    return r


REFS = [ref("finetuned", 1.0), ref("finetuned+magnitude-50", 0.6, "magnitude")]
SAU_ROUGE = (0.5, 0.48, 0.52)


def sparse_only_rows():
    """A sparse-only grid: the pruned model's utility is 0.6, the dense model's 1.0; per seed the smaller learning
    rate keeps 0.58 (forget ROUGE: SAU 0.5 / 0.48 / 0.52, plain 0.6), the larger one 0.45 (0.2 / 0.3)."""
    rows = list(REFS)
    for s in range(3):
        rows += [run(True, s, 1e-4, 0.58, SAU_ROUGE[s]), run(False, s, 1e-4, 0.58, 0.6),
                 run(True, s, 1e-3, 0.45, 0.2), run(False, s, 1e-3, 0.45, 0.3)]
    return rows


def by_metric(comparisons):
    return {c["metric"]: c for c in comparisons}


def test_a_sparse_only_grid_is_read_at_the_pruned_models_band_not_the_dense_models_floor():
    rows = sparse_only_rows()
    # before: one floor at 0.9 x the dense model's utility, which no 50%-pruned run reaches: no seed pairs
    old = by_metric(report_comparisons(rows, TOFU_REPORT, 0.9 * 1.0))["forget_rouge"]
    assert old["paired_seeds"] == 0 and old["verdict"] == "inconclusive"
    c = by_metric(band_comparisons(rows, TOFU_REPORT))["forget_rouge"]
    # the band is [0.85, 0.95] x 0.6 = [0.51, 0.57]; only the lr 1e-4 points (utility 0.58) cover it, so each
    # side's frontier is its lr 1e-4 value over the whole band
    assert c["band"]["utility"] == pytest.approx([0.51, 0.57]) and c["utility_floor"] == pytest.approx(0.51)
    assert c["band"]["start_utility"] == 0.6 and "finetuned+magnitude-50" in c["band"]["start"]
    assert c["points"] == "final" and c["paired_seeds"] == 3 and c["reason"] is None
    mean, ci = ci3([a - 0.6 for a in SAU_ROUGE])
    assert c["a_mean"] == pytest.approx(0.5) and c["b_mean"] == pytest.approx(0.6)
    assert c["diff_mean"] == pytest.approx(mean) and c["ci95"] == pytest.approx(ci)
    assert c["verdict"] == "better" and c["fragile"] is False  # lower forget ROUGE: SAU forgot more
    # the existing keys stay, the new ones are added
    assert set(c) >= {"pruning", "target_sparsity", "objective", "a", "b", "metric", "utility_floor", "seeds",
                      "a_mean", "b_mean", "diff_mean", "ci95", "verdict", "better_direction", "paired_seeds",
                      "per_seed", "band", "fragile", "sensitivity"}
    assert [e["kind"] for e in c["sensitivity"]] == ["floor"] * 5 + ["without_lr"] * 2


def test_the_sparsity_penalty_is_read_at_the_pruned_models_band():
    rows = sparse_only_rows()
    for s in range(3):  # plain on the dense model: the finetuned model's curve, utility from 1.0 down
        rows += [run(False, s, 1e-4, 0.9, 0.4, pruning=None), run(False, s, 1e-3, 0.55, 0.1 + 0.01 * s, pruning=None)]
    penalty = [c for c in band_comparisons(rows, TOFU_REPORT) if c["a"] == "sparse-plain"]
    c = by_metric(penalty)["forget_rouge"]
    # band [0.51, 0.57] (the pruned model's): dense plain is 0.1 + 0.01 s on (0.45, 0.55], 0.4 on (0.55, 0.9];
    # its mean over the band: (0.04 * (0.1 + 0.01 s) + 0.02 * 0.4) / 0.06; sparse plain: 0.6 throughout
    dense = [(0.04 * (0.1 + 0.01 * s) + 0.02 * 0.4) / 0.06 for s in range(3)]
    assert c["band"]["utility"] == pytest.approx([0.51, 0.57]) and c["paired_seeds"] == 3
    assert c["b_mean"] == pytest.approx(sum(dense) / 3) and c["verdict"] == "worse"


def test_trajectories_are_the_only_points_and_step_0_gives_the_start():
    rows = list(REFS)
    for s in range(3):
        # step 0 utility 0.62 (the trajectory's own evaluation of the start); the final metrics would favour plain
        # by far (forget ROUGE 0.0 at utility 0.59) if they were mixed in
        rows += [run(True, s, 1e-4, 0.3, 0.9, trajectory=[(0, 0.62, 1.0), (5, 0.60, 0.4 + 0.01 * s), (10, 0.5, 0.1)]),
                 run(False, s, 1e-4, 0.59, 0.0, trajectory=[(0, 0.62, 1.0), (5, 0.60, 0.7), (10, 0.5, 0.2)])]
    c = by_metric(band_comparisons(rows, TOFU_REPORT))["forget_rouge"]
    assert c["points"] == "trajectories" and c["band"]["start_utility"] == pytest.approx(0.62)
    lo, hi = 0.85 * 0.62, 0.95 * 0.62  # [0.527, 0.589]: below 0.60, above 0.5: the step-5 values cover the band
    assert c["band"]["utility"] == pytest.approx([lo, hi])
    assert c["a_mean"] == pytest.approx(0.41) and c["b_mean"] == pytest.approx(0.7)
    assert c["verdict"] == "better" and c["paired_seeds"] == 3
    report = build_report(rows, [c])
    assert report["runs"][0]["trajectory"][1] == {"step": 5, "model_utility": 0.6, "forget_rouge": 0.4,
                                                  "forget_quality": 0.1}


def fragile_rows():
    """Over the band SAU forgets more (its frontier drops to ~0.2 at utility 0.56), but at the band's bottom (0.51)
    plain's 0.1 (reached only at 0.53) beats it: the single floor 0.85 flips the verdict."""
    rows = list(REFS)
    for s in range(3):
        rows += [run(True, s, 1e-4, 0.56, 0.2 + 0.01 * (s - 1), trajectory=[(0, 0.6, 1.0), (5, 0.56, 0.2 + 0.01 * (s - 1))]),
                 run(False, s, 1e-4, 0.53, 0.1, trajectory=[(0, 0.6, 1.0), (5, 0.53, 0.1)])]
    return rows


def test_a_fragile_verdict_is_marked_and_said_so_in_the_opening_sentences():
    c = by_metric(band_comparisons(fragile_rows(), TOFU_REPORT))["forget_rouge"]
    # SAU: 0.2 on [0.51, 0.56], 1.0 on (0.56, 0.57] -> (0.05 * 0.2 + 0.01) / 0.06 = 1/3 (seed 1);
    # plain: 0.1 on [0.51, 0.53], 1.0 above -> (0.02 * 0.1 + 0.04) / 0.06 = 0.7
    assert c["a_mean"] == pytest.approx(1 / 3) and c["b_mean"] == pytest.approx(0.7)
    assert c["verdict"] == "better" and c["fragile"] is True
    floor_85 = next(e for e in c["sensitivity"] if e["kind"] == "floor" and e["floor_fraction"] == pytest.approx(0.85))
    assert floor_85["verdict"] == "worse" and floor_85["flips"]
    recipe = validate({"name": "band", "model": {"shape": "tiny"}})
    md = render_markdown(fragile_rows(), recipe)
    opening = md[md.index("## What this run shows"):md.index("## How to read this report")]
    assert "over a utility band, 85% to 95% of each comparison's starting model's model utility" in opening
    assert "1 of them fragile" in opening
    assert "**fragile: SAU forgets more than plain** over the band, but not at the single floor 0.85" in opening
    assert "resolution: mean over 20 examples" in opening  # forget ROUGE: no fixed step
    assert "resolution: KS p-value of 20 vs 20 examples" in opening  # forget quality
    assert "The frontiers use the evaluations during unlearning" not in opening  # eval_steps is off in this recipe
    assert "## Comparisons over the utility band" in md


def test_the_resolution_says_when_a_difference_is_below_one_step():
    rows = list(REFS)
    for s in range(3):  # forget quality 0.175 against 0.336 (neighbouring KS values of 20 vs 20, ~0.28 apart in log10)
        rows += [run(True, s, 1e-4, 0.58, 0.5, fq=0.336), run(False, s, 1e-4, 0.58, 0.6, fq=0.175 + 1e-9 * s)]
    c = by_metric(band_comparisons(rows, TOFU_REPORT))["forget_quality_log10"]
    r = c["resolution"]
    assert r["kind"] == "ks" and r["n"] == 20 and r["values"] == 20
    assert r["step"] > abs(c["diff_mean"]) * 0.5 and r["diff_below_step"] is False
    assert "20 vs 20" in r["note"]


def test_utility_fraction_is_a_band_of_width_zero_and_the_report_says_so():
    recipe = validate({"name": "old", "model": {"shape": "tiny"}, "report": {"utility_fraction": 0.9}})
    band, note = recipe_band(recipe.report)
    assert band == (0.9, 0.9) and "width 0" in note
    c = by_metric(band_comparisons(sparse_only_rows(), TOFU_REPORT, band))["forget_rouge"]
    assert c["band"]["width_zero"] and c["utility_floor"] == pytest.approx(0.54)
    assert not [e for e in c["sensitivity"] if e["kind"] == "floor"]
    md = render_markdown(sparse_only_rows(), recipe)
    assert "report.utility_fraction 0.9 is read as a utility band of width 0" in md
    assert "at one floor, 90% of each comparison's starting model's" in md
    default = validate({"name": "new", "model": {"shape": "tiny"}})
    assert recipe_band(default.report) == ((0.85, 0.95), None)
    assert recipe_band(validate({"model": {"shape": "tiny"}, "report": {"utility_band": [0.8, 0.9]}}).report)[0] \
        == (0.8, 0.9)


@pytest.mark.parametrize("report,message", [
    ({"utility_band": [0.95, 0.85]}, "report.utility_band: give two fractions"),
    ({"utility_band": [0.9]}, "report.utility_band: give two fractions"),
    ({"utility_band": [0.0, 0.9]}, "report.utility_band: give two fractions"),
    ({"utility_band": [0.85, 0.95], "utility_fraction": 0.9}, "not both"),
])
def test_bad_bands_are_refused_in_one_line(report, message):
    with pytest.raises(RecipeError, match=message):
        validate({"model": {"shape": "tiny"}, "report": report})


def test_a_comparison_without_a_starting_utility_says_why():
    rows = [r for r in sparse_only_rows() if r["name"] != "finetuned+magnitude-50"]
    c = by_metric(band_comparisons(rows, TOFU_REPORT))["forget_rouge"]
    assert c["verdict"] == "inconclusive" and c["a_mean"] is None and c["paired_seeds"] == 0
    assert "starting utility None" in c["reason"] and "no reference row" in c["reason"]
    assert start_reference(REFS, run(True, 0, 1e-4, 0.5, 0.5))["name"] == "finetuned+magnitude-50"
    assert start_reference(REFS, run(True, 0, 1e-4, 0.5, 0.5, pruning=None))["name"] == "finetuned"


def test_a_curve_that_never_reaches_the_band_names_the_side_and_the_reason():
    rows = list(REFS)
    for s in range(3):  # SAU never keeps utility 0.57 (the band's top): its best is 0.55
        rows += [run(True, s, 1e-4, 0.55, 0.3), run(False, s, 1e-4, 0.58, 0.6)]
    c = by_metric(band_comparisons(rows, TOFU_REPORT))["forget_rouge"]
    assert c["paired_seeds"] == 0 and "a never keeps utility >= 0.57" in c["reason"]
    md = render_markdown(rows, validate({"name": "x", "model": {"shape": "tiny"}}))
    assert "inconclusive (0 paired seed(s), 3 needed (seed 0: a never keeps utility >= 0.57" in md
