"""The report's conclusions (SPEC section 7) on constructed curves: the value at the utility floor, the t interval
over seeds, each verdict, and the report's list of comparisons."""

import math

import pytest

from sau_trainer.data.benchmarks import TOFU_REPORT
from sau_trainer.pipeline.comparisons import (
    compare,
    report_comparisons,
    seed_values,
    t_interval,
    value_at_floor,
    verdict,
)


def test_the_value_is_interpolated_between_the_two_learning_rates_around_the_floor():
    # utility 0.9 -> 0.8 -> 0.4 over lr; floor 0.6 lies halfway between the 2nd and 3rd point
    pts = [(1e-4, 0.9, 0.8), (3e-4, 0.8, 0.6), (1e-3, 0.4, 0.2)]
    assert value_at_floor(pts, 0.6) == pytest.approx(0.4, abs=1e-15)
    assert value_at_floor(list(reversed(pts)), 0.6) == pytest.approx(0.4, abs=1e-15)  # sorted by lr first
    assert value_at_floor(pts, 0.85) == pytest.approx(0.7, abs=1e-15)  # between the 1st and 2nd
    assert value_at_floor(pts, 0.8) == 0.6  # a point exactly at the floor is read as it is
    # the first fall counts: a curve that comes back above the floor later is read at its first crossing
    assert value_at_floor([*pts, (3e-3, 0.7, 0.1)], 0.6) == pytest.approx(0.4, abs=1e-15)


def test_a_curve_that_never_reaches_the_floor_or_starts_below_it_has_no_value():
    assert value_at_floor([(1e-4, 0.9, 0.8), (1e-3, 0.7, 0.5)], 0.6) is None  # always above
    assert value_at_floor([(1e-4, 0.5, 0.8), (1e-3, 0.3, 0.5)], 0.6) is None  # already below at the smallest lr
    assert value_at_floor([], 0.6) is None
    assert value_at_floor([(1e-4, 0.9, None), (1e-3, 0.3, 0.5)], 0.6) is None  # a missing metric


def test_the_t_interval_with_three_seeds_matches_the_textbook_formula():
    mean, ci = t_interval([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.302652729749464 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert mean == pytest.approx(7 / 3, rel=1e-12)
    assert ci == pytest.approx([7 / 3 - half, 7 / 3 + half], rel=1e-9)
    assert t_interval([0.5]) == (0.5, None) and t_interval([]) == (None, None)


def test_each_verdict():
    assert verdict([0.1, 0.3], 3, "max") == "better"
    assert verdict([0.1, 0.3], 3, "min") == "worse"
    assert verdict([-0.3, -0.1], 3, "max") == "worse"
    assert verdict([-0.3, -0.1], 3, "min") == "better"
    assert verdict([-0.1, 0.3], 5, "max") == "inconclusive"  # the interval contains 0
    assert verdict([0.1, 0.3], 2, "max") == "inconclusive"  # fewer than 3 seeds
    assert verdict(None, 3, "max") == "inconclusive"


def run(method, seed, lr, utility, rouge, fq=0.5, objective="npo", pruning=None):
    return {"name": f"{method}-{lr}-s{seed}", "pruning": pruning, "target_sparsity": 0.5 if pruning else 0.0,
            "model": "sparse" if pruning else "dense", "objective": objective, "sau": method == "sau",
            "learning_rate": lr, "seed": seed, "reference": False,
            "metrics": {"model_utility": utility, "forget_rouge": rouge, "forget_quality": fq}}


def curves(method, seed, rouge_at_floor, pruning=None, objective="npo"):
    """A curve whose forget ROUGE at the floor 0.6 is `rouge_at_floor` (reached halfway between lr 2 and 3)."""
    return [run(method, seed, 1e-4, 0.9, 0.9, pruning=pruning, objective=objective),
            run(method, seed, 2e-4, 0.8, rouge_at_floor + 0.1, 1e-3, pruning=pruning, objective=objective),
            run(method, seed, 4e-4, 0.4, rouge_at_floor - 0.1, 1e-1, pruning=pruning, objective=objective)]


def test_compare_pairs_seeds_and_reports_means_difference_interval_and_verdict():
    rows = [r for s, (a, b) in enumerate([(0.2, 0.5), (0.3, 0.5), (0.25, 0.6)])
            for r in curves("sau", s, a) + curves("plain", s, b)]
    res = compare(rows, {"sau": True}, {"sau": False}, metric="forget_rouge", floor=0.6, better="min")
    assert res["seeds"] == res["paired_seeds"] == 3
    assert res["a_mean"] == pytest.approx(0.25) and res["b_mean"] == pytest.approx(8 / 15)
    assert res["diff_mean"] == pytest.approx(0.25 - 8 / 15)
    assert res["ci95"][1] < 0 and res["verdict"] == "better"  # lower forget ROUGE: SAU forgot more
    assert [p["seed"] for p in res["per_seed"]] == [0, 1, 2]
    assert res["per_seed"][0]["a"] == pytest.approx(0.2)
    flipped = compare(rows, lambda r: not r["sau"], lambda r: r["sau"], metric="forget_rouge", floor=0.6, better="min")
    assert flipped["verdict"] == "worse"
    # forget quality read as log10, halfway between 1e-3 and 1e-1: 1e-2
    fq = seed_values(rows, {"sau": True}, metric="forget_quality", floor=0.6, log=True)
    assert fq == {0: pytest.approx(-2.0), 1: pytest.approx(-2.0), 2: pytest.approx(-2.0)}
    two = compare([r for r in rows if r["seed"] < 2], {"sau": True}, {"sau": False}, metric="forget_rouge",
                  floor=0.6, better="min")
    assert two["seeds"] == 2 and two["ci95"] is not None and two["verdict"] == "inconclusive"  # < 3 seeds
    noisy = [r for s, (a, b) in enumerate([(0.2, 0.5), (0.6, 0.3), (0.4, 0.45)])
             for r in curves("sau", s, a) + curves("plain", s, b)]
    res = compare(noisy, {"sau": True}, {"sau": False}, metric="forget_rouge", floor=0.6, better="min")
    assert res["ci95"][0] < 0 < res["ci95"][1] and res["verdict"] == "inconclusive"


def test_a_side_without_a_value_is_null_and_inconclusive():
    rows = []
    for s in range(3):
        rows += curves("plain", s, 0.5)
        rows += [run("sau", s, lr, 0.9, 0.9) for lr in (1e-4, 2e-4, 4e-4)]  # utility never falls to the floor
    res = compare(rows, {"sau": True}, {"sau": False}, metric="forget_rouge", floor=0.6, better="min")
    assert res["a_mean"] is None and res["diff_mean"] is None and res["ci95"] is None
    assert res["b_mean"] == pytest.approx(0.5) and res["seeds"] == 3 and res["paired_seeds"] == 0
    assert res["verdict"] == "inconclusive"


def test_a_selector_that_mixes_methods_is_refused():
    rows = curves("sau", 0, 0.2) + curves("plain", 0, 0.5)
    with pytest.raises(ValueError, match="one learning rate"):
        seed_values(rows, {"seed": 0}, metric="forget_rouge", floor=0.6)


def test_the_report_lists_sau_against_plain_everywhere_and_the_sparsity_penalty():
    rows = []
    for s in range(3):
        for pruning, (sau, plain) in ((None, (0.2, 0.3)), ("magnitude", (0.5, 0.6 + 0.01 * s))):
            rows += curves("sau", s, sau, pruning) + curves("plain", s, plain, pruning)
    rows.append({**run("plain", 0, 1e-4, 0.5, 0.1), "reference": True, "name": "finetuned"})  # left out
    rows.append({**run("plain", 0, 1e-4, 0.1, 0.1, pruning="magnitude"), "unlearn_then_prune": True})  # left out
    out = report_comparisons(rows, TOFU_REPORT, 0.6)
    keys = [(c["pruning"], c["a"], c["b"], c["metric"]) for c in out]
    assert keys == [(None, "sau", "plain", "forget_quality_log10"), (None, "sau", "plain", "forget_rouge"),
                    ("magnitude", "sau", "plain", "forget_quality_log10"), ("magnitude", "sau", "plain", "forget_rouge"),
                    ("magnitude", "sparse-plain", "dense-plain", "forget_quality_log10"),
                    ("magnitude", "sparse-plain", "dense-plain", "forget_rouge")]
    by = {(c["pruning"], c["a"], c["metric"]): c for c in out}
    assert by[(None, "sau", "forget_rouge")]["verdict"] == "better"  # 0.2 against 0.3 on every seed
    assert by[("magnitude", "sau", "forget_rouge")]["verdict"] == "better"
    penalty = by[("magnitude", "sparse-plain", "forget_rouge")]
    assert penalty["verdict"] == "worse" and penalty["a_mean"] == pytest.approx(0.61)
    assert penalty["b_mean"] == pytest.approx(0.3) and penalty["utility_floor"] == 0.6
    for c in out:
        assert c["seeds"] == 3 and c["objective"] == "npo" and c["verdict"] in ("better", "worse", "inconclusive")
        assert set(c) >= {"pruning", "objective", "a", "b", "metric", "utility_floor", "seeds", "a_mean", "b_mean",
                          "diff_mean", "ci95", "verdict"}
    assert report_comparisons(rows, TOFU_REPORT, None) == []
