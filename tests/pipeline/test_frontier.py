"""Frontier comparisons over a utility band (SPEC section 7, revised) on constructed trajectories: the frontier and
its exact band mean, coverage, ties, a width-0 band, the verdicts and the sensitivity check. Every expected value is
worked out by hand in the comment or expression beside it."""

import math

import pytest

from sau_trainer.pipeline.comparisons import compare
from sau_trainer.pipeline.frontier import (
    Point,
    band_mean,
    band_utilities,
    compare_band,
    frontier,
    frontier_steps,
    row_points,
)

T2 = 4.302652729749464  # t_{0.975, 2}: the 95% interval over 3 seeds


def pts(*uv, lr=1e-4):
    """Points (utility, value) of one learning rate."""
    return [Point(lr, i, u, v) for i, (u, v) in enumerate(uv)]


def run(method, seed, lr, *traj, metric="forget_rouge"):
    """A report row whose trajectory is the (utility, value) pairs `traj`, steps 10, 20, ...; the last is final."""
    evals = [{"step": 10 * (i + 1), "model_utility": u, metric: v} for i, (u, v) in enumerate(traj)]
    return {"name": f"{method}-{lr}-s{seed}", "method": method, "learning_rate": lr, "seed": seed,
            "trajectory": evals, "metrics": {"model_utility": traj[-1][0], metric: traj[-1][1]}}


def ci3(diffs):
    """Hand formula of the 95% t interval over 3 values (mean, [lo, hi])."""
    m = sum(diffs) / 3
    half = T2 * math.sqrt(sum((d - m) ** 2 for d in diffs) / 2) / math.sqrt(3)
    return m, [m - half, m + half]


# ----------------------------------------------------------------------------------------- one frontier
def test_the_frontier_is_the_best_value_with_utility_at_least_u_and_its_band_mean_is_exact():
    p = pts((0.97, 0.1), (0.90, 0.5), (0.80, 0.9))
    assert frontier(p, 0.95) == 0.1 and frontier(p, 0.90) == 0.5 and frontier(p, 0.85) == 0.5
    assert frontier(p, 0.5) == 0.9 and frontier(p, 0.98) is None
    assert frontier(p, 0.85, "min") == 0.1  # lower is better: the lowest value among 0.97 and 0.90
    assert frontier_steps(p) == [(0.97, 0.1), (0.90, 0.5), (0.80, 0.9)]
    # [0.85, 0.95]: 0.5 on (0.85, 0.90], 0.1 on (0.90, 0.95] -> (0.05 * 0.5 + 0.05 * 0.1) / 0.1 = 0.3
    assert band_mean(p, 0.85, 0.95) == pytest.approx(0.3, abs=1e-12)
    # lower is better: 0.1 on the whole band (0.1 beats 0.5 at every u <= 0.97)
    assert band_mean(p, 0.85, 0.95, "min") == pytest.approx(0.1, abs=1e-12)
    assert band_mean(iter(p), 0.9, 0.9) == 0.5  # any iterable: a width-0 band reads the frontier at its floor


def test_a_curve_below_the_band_has_no_value_and_one_above_it_reads_its_best_point():
    below = pts((0.93, 0.8), (0.70, 0.9))  # its best utility 0.93 < the band's top 0.95
    assert band_mean(below, 0.85, 0.95) is None
    above = pts((0.99, 0.2), (0.97, 0.4))  # every point keeps utility above the band: the best, 0.4, everywhere
    assert band_mean(above, 0.85, 0.95) == pytest.approx(0.4, abs=1e-12)
    assert band_mean([], 0.85, 0.95) is None


def test_a_non_monotone_curve_counts_the_high_rate_that_comes_back_above_the_band():
    # utility 0.97 at 1e-4, 0.80 at 3e-4, back to 0.92 at 1e-3 (rising again at a high rate)
    p = pts((0.97, 0.1), lr=1e-4) + pts((0.80, 0.6), lr=3e-4) + pts((0.92, 0.8), lr=1e-3)
    # frontier: 0.8 on (0.80, 0.92] (the 1e-3 point), 0.1 on (0.92, 0.97]
    # band [0.85, 0.95]: (0.07 * 0.8 + 0.03 * 0.1) / 0.1 = 0.59
    assert band_mean(p, 0.85, 0.95) == pytest.approx(0.59, abs=1e-12)


def test_ties_in_utility_take_the_best_value_and_a_point_at_the_band_top_covers_it():
    p = pts((0.95, 0.3), (0.95, 0.7), (0.90, 0.5), (0.90, 0.4))
    assert frontier_steps(p) == [(0.95, 0.7), (0.90, 0.7)]
    assert band_mean(p, 0.85, 0.95) == pytest.approx(0.7, abs=1e-12)  # 0.7 at utility exactly 0.95 covers the band
    assert frontier_steps(p, "min") == [(0.95, 0.3), (0.90, 0.3)]
    # a point exactly at the band's bottom counts at the bottom only (measure zero): still 0.3 everywhere for "min"
    assert band_mean(p + pts((0.85, 0.0)), 0.85, 0.95, "min") == pytest.approx(0.3, abs=1e-12)
    assert frontier(p + pts((0.85, 0.0)), 0.85, "min") == 0.0


def test_row_points_read_flat_and_nested_trajectories_and_the_final_metrics_and_skip_missing_values():
    row = {"learning_rate": 3e-4, "metrics": {"model_utility": 0.8, "forget_quality": 0.0},
           "trajectory": [{"step": 0, "model_utility": 0.9, "forget_quality": 0.01},
                          {"step": 5, "metrics": {"model_utility": 0.85, "forget_quality": 1.0}},
                          {"step": 7, "model_utility": None, "forget_quality": 0.5},
                          {"step": 8, "model_utility": float("nan"), "forget_quality": 0.5}]}
    assert row_points(row, metric="forget_quality", log=True) == [
        Point(3e-4, 0, 0.9, -2.0), Point(3e-4, 5, 0.85, 0.0), Point(3e-4, None, 0.8, -30.0)]  # log10; 0 -> 1e-30


# ----------------------------------------------------------------------------------------- two methods
def rouge_rows(a_values, b_values):
    """3 seeds; a (lower is better): points (0.96, 0.4) and (0.90, a_value); b: (0.96, 0.5), (0.90, b_value)."""
    rows = []
    for s, (va, vb) in enumerate(zip(a_values, b_values, strict=True)):
        rows += [run("a", s, 1e-4, (0.96, 0.4), (0.90, va)), run("b", s, 1e-4, (0.96, 0.5), (0.90, vb))]
    return rows


def test_lower_is_better_metric_gives_better_for_the_lower_frontier():
    rows = rouge_rows([0.2, 0.2, 0.2], [0.45, 0.46, 0.47])
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0,
                       better="min")
    # a: 0.2 on (0.85, 0.90], 0.4 on (0.90, 0.95] -> 0.3; b: (0.45 + 0.5) / 2 = 0.475, 0.48, 0.485
    diffs = [0.3 - 0.475, 0.3 - 0.48, 0.3 - 0.485]
    mean, ci = ci3(diffs)
    assert [e["a"] for e in res["per_seed"]] == pytest.approx([0.3] * 3, abs=1e-12)
    assert [e["b"] for e in res["per_seed"]] == pytest.approx([0.475, 0.48, 0.485], abs=1e-12)
    assert res["a_mean"] == pytest.approx(0.3) and res["b_mean"] == pytest.approx(0.48)
    assert res["diff_mean"] == pytest.approx(mean, abs=1e-12) and res["ci95"] == pytest.approx(ci, abs=1e-9)
    assert res["verdict"] == "better" and res["paired_seeds"] == 3 and res["fragile"] is False
    assert res["band"] == {"fractions": [0.85, 0.95], "start_utility": 1.0, "utility": [0.85, 0.95],
                           "width_zero": False, "mean": "exact mean of the step-function frontiers over the band"}
    # read as higher-is-better the same runs make a worse: a = 0.4 everywhere, b = 0.5 -> -0.1
    flipped = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0)
    assert flipped["a_mean"] == pytest.approx(0.4) and flipped["b_mean"] == pytest.approx(0.5)


def test_the_band_is_relative_to_the_starting_model_and_width_zero_reads_one_floor():
    rows = rouge_rows([0.2, 0.2, 0.2], [0.45, 0.46, 0.47])
    # start 0.5: the band [0.425, 0.475] is below every point, so each side reads its best point over all: a 0.2,
    # b 0.45, 0.46, 0.47
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=0.5, better="min")
    assert res["band"]["utility"] == pytest.approx([0.425, 0.475])
    assert [e["diff"] for e in res["per_seed"]] == pytest.approx([-0.25, -0.26, -0.27], abs=1e-12)
    # width 0 at 0.93: a reads 0.4 (only the 0.96 point counts), b 0.5 -> -0.1 each, sd 0: interval [-0.1, -0.1]
    one = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0,
                       band=(0.93, 0.93), better="min")
    assert one["band"]["width_zero"] is True and one["band"]["mean"] == "frontiers read at one floor"
    assert one["diff_mean"] == pytest.approx(-0.1) and one["ci95"] == pytest.approx([-0.1, -0.1])
    assert one["verdict"] == "better"
    assert [e["kind"] for e in one["sensitivity"]] == []  # one learning rate, one floor: nothing to recompute


def test_fewer_than_three_seeds_is_inconclusive_and_a_dropped_seed_says_why():
    rows = rouge_rows([0.2, 0.2, 0.2], [0.45, 0.46, 0.47])
    rows = [r for r in rows if not (r["method"] == "b" and r["seed"] == 2)]
    rows.append(run("b", 2, 1e-4, (0.93, 0.5), (0.80, 0.45)))  # seed 2 of b never keeps utility 0.95
    rows.append(run("a", 3, 1e-4, (0.96, 0.4)))  # seed 3: a only
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0, better="min")
    assert res["seeds"] == 4 and res["paired_seeds"] == 2
    mean = ((0.3 - 0.475) + (0.3 - 0.48)) / 2
    assert res["diff_mean"] == pytest.approx(mean) and res["ci95"] is not None and res["ci95"][1] < 0
    assert res["verdict"] == "inconclusive"  # the interval is below 0 but 2 seeds are fewer than 3
    dropped = {e["seed"]: e.get("dropped") for e in res["per_seed"]}
    assert dropped[0] is None and dropped[1] is None
    assert "b never keeps utility >= 0.95" in dropped[2] and "its best is 0.93" in dropped[2]
    assert dropped[3] == "b has no run with this seed"


def test_equal_frontiers_are_inconclusive_not_better():
    rows = rouge_rows([0.45, 0.45, 0.45], [0.45, 0.45, 0.45])
    for r in rows:  # both sides identical point for point: differences 0, interval [0, 0]
        r["trajectory"][0]["forget_rouge"] = 0.5
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0, better="min")
    assert res["diff_mean"] == 0 and res["ci95"] == [0, 0] and res["verdict"] == "inconclusive"


def test_adding_a_learning_rate_never_removes_a_value_unlike_the_crossing_point():
    # the TOFU forget01 case: a's smallest rate is already below the floor, a larger one is above it
    rows = []
    for s in range(3):
        rows += [run("a", s, 5e-4, (0.80, 0.7)), run("a", s, 1e-3, (0.93 + 0.01 * s, 0.5)),
                 run("b", s, 5e-4, (0.99, 0.2)), run("b", s, 1e-3, (0.70, 0.6))]
    old = compare(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", floor=0.9)
    assert old["paired_seeds"] == 0  # the crossing rule drops every seed of a
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0,
                       band=(0.9, 0.9))
    # at floor 0.9: a has 0.5 (the 1e-3 point, utility 0.93-0.95), b 0.2 (the 0.99 point): +0.3 each seed
    assert res["paired_seeds"] == 3 and res["diff_mean"] == pytest.approx(0.3)


def test_a_selector_matching_two_runs_of_one_rate_and_seed_is_refused():
    rows = [run("a", 0, 1e-4, (0.9, 0.1)), run("a", 0, 1e-4, (0.8, 0.2)), run("b", 0, 1e-4, (0.9, 0.1))]
    with pytest.raises(ValueError, match="several runs with one learning rate"):
        compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0)


@pytest.mark.parametrize("band, start, message", [((0.95, 0.85), 1.0, "0 <= lo <= hi"), ((0.9,), 1.0, "two fractions"),
                                                  ((0.85, float("nan")), 1.0, "two fractions"),
                                                  ((0.85, 0.95), None, "starting model's utility"),
                                                  ((0.85, 0.95), 0.0, "positive number")])
def test_a_bad_band_or_start_is_refused_with_what_to_give(band, start, message):
    with pytest.raises(ValueError, match=message):
        band_utilities(start, band)


# ----------------------------------------------------------------------------------------- sensitivity
def three_rate_rows(a_lr1: float | list[float]):
    """3 seeds, 3 rates, higher is better. Points at 0.99 or 0.96 cover the whole band [0.85, 0.95]; points below
    0.85 never count. a: 1e-4 (0.99, a_lr1), 3e-4 (0.96, 0.6 / 0.62 / 0.64), 1e-3 (0.5, 0.9);
    b: 1e-4 (0.99, 0.3 / 0.31 / 0.32), 3e-4 (0.70, 0.9), 1e-3 (0.5, 0.95)."""
    a_lr1 = a_lr1 if isinstance(a_lr1, list) else [a_lr1] * 3
    rows = []
    for s in range(3):
        rows += [run("a", s, 1e-4, (0.99, a_lr1[s])), run("a", s, 3e-4, (0.96, 0.6 + 0.02 * s)),
                 run("a", s, 1e-3, (0.5, 0.9)), run("b", s, 1e-4, (0.99, 0.3 + 0.01 * s)),
                 run("b", s, 3e-4, (0.70, 0.9)), run("b", s, 1e-3, (0.5, 0.95))]
    return rows


def test_leaving_out_a_learning_rate_that_flips_the_verdict_makes_it_fragile():
    res = compare_band(three_rate_rows(0.2), {"method": "a"}, {"method": "b"}, metric="forget_rouge",
                       start_utility=1.0)
    # the band means are the best points with utility >= 0.95: a 0.6 / 0.62 / 0.64, b 0.3 / 0.31 / 0.32
    mean, ci = ci3([0.3, 0.31, 0.32])
    assert res["diff_mean"] == pytest.approx(mean) and res["ci95"] == pytest.approx(ci) and res["verdict"] == "better"
    assert res["fragile"] is True
    checks = {(e["kind"], e.get("learning_rate", e.get("floor_fraction"))): e for e in res["sensitivity"]}
    assert [e["floor_fraction"] for e in res["sensitivity"] if e["kind"] == "floor"] == pytest.approx(
        [0.85, 0.875, 0.9, 0.925, 0.95])
    # the frontiers are flat over the band, so every floor agrees with the band
    assert all(e["verdict"] == "better" and not e["flips"] for e in res["sensitivity"] if e["kind"] == "floor")
    # without 3e-4: a falls back to 0.2, b keeps 0.3 / 0.31 / 0.32 -> -0.1, -0.11, -0.12: worse
    w_mean, w_ci = ci3([-0.1, -0.11, -0.12])
    without = checks[("without_lr", 3e-4)]
    assert without["diff_mean"] == pytest.approx(w_mean) and without["ci95"] == pytest.approx(w_ci)
    assert without["verdict"] == "worse" and without["flips"] is True
    # without 1e-4: b has no point >= 0.95 left, every seed dropped -> no value, not a flip
    assert checks[("without_lr", 1e-4)]["paired_seeds"] == 0 and checks[("without_lr", 1e-4)]["flips"] is False
    assert checks[("without_lr", 1e-3)]["verdict"] == "better" and checks[("without_lr", 1e-3)]["flips"] is False


def test_a_verdict_that_survives_every_left_out_rate_is_not_fragile():
    res = compare_band(three_rate_rows(0.35), {"method": "a"}, {"method": "b"}, metric="forget_rouge",
                       start_utility=1.0)
    # without 3e-4: a 0.35 against 0.3 / 0.31 / 0.32 -> +0.05, +0.04, +0.03: still positive
    without = next(e for e in res["sensitivity"] if e.get("learning_rate") == 3e-4)
    assert without["diff_mean"] == pytest.approx(0.04) and without["flips"] is False
    assert res["verdict"] == "better" and res["fragile"] is False


def test_a_left_out_rate_whose_estimate_changes_sign_makes_a_decisive_verdict_fragile_even_if_inconclusive():
    res = compare_band(three_rate_rows([0.1, 0.5, 0.2]), {"method": "a"}, {"method": "b"}, metric="forget_rouge",
                       start_utility=1.0)
    assert res["verdict"] == "better"  # a 0.6 / 0.62 / 0.64 against b 0.3 / 0.31 / 0.32, as above
    # without 3e-4: a 0.1 / 0.5 / 0.2 against 0.3 / 0.31 / 0.32 -> -0.2, +0.19, -0.12: mean -0.13 / 3, inconclusive
    without = next(e for e in res["sensitivity"] if e.get("learning_rate") == 3e-4)
    assert without["diff_mean"] == pytest.approx(-0.13 / 3) and without["verdict"] == "inconclusive"
    assert without["flips"] is True and res["fragile"] is True


def test_a_floor_inside_the_band_that_flips_the_verdict_makes_it_fragile():
    rows = []
    for s in range(3):  # a: 0.5 / 0.505 / 0.51 over the whole band; b: 0.3 on (0.88, 0.96], 0.9 below 0.88
        rows += [run("a", s, 1e-4, (0.96, 0.5 + 0.005 * s), (0.80, 0.99)),
                 run("b", s, 1e-4, (0.96, 0.3), (0.88, 0.9))]
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0)
    # b over [0.85, 0.95]: (0.03 * 0.9 + 0.07 * 0.3) / 0.1 = 0.48; diffs 0.02, 0.025, 0.03
    mean, ci = ci3([0.02, 0.025, 0.03])
    assert res["diff_mean"] == pytest.approx(mean) and res["ci95"] == pytest.approx(ci) and res["verdict"] == "better"
    floors = [(e["floor_fraction"], round(e["diff_mean"], 12), e["verdict"], e["flips"])
              for e in res["sensitivity"] if e["kind"] == "floor"]
    # floors 0.85 and 0.875 are below b's 0.88 point: b 0.9 -> -0.4, -0.395, -0.39 (worse); above it b 0.3 -> +0.2..
    assert floors == [(pytest.approx(0.85), -0.395, "worse", True), (pytest.approx(0.875), -0.395, "worse", True),
                      (pytest.approx(0.9), 0.205, "better", False), (pytest.approx(0.925), 0.205, "better", False),
                      (pytest.approx(0.95), 0.205, "better", False)]
    assert res["fragile"] is True


def test_an_inconclusive_verdict_is_fragile_only_when_recomputations_disagree_decisively():
    rows = []
    for s in range(3):  # seed 2 is the other way round, so the band is inconclusive
        sign = -1 if s == 2 else 1
        rows += [run("a", s, 1e-4, (0.96, 0.5 + 0.005 * s), (0.80, 0.99)),
                 run("b", s, 1e-4, (0.96, 0.5 - sign * 0.2), (0.88, 0.9))]
    res = compare_band(rows, {"method": "a"}, {"method": "b"}, metric="forget_rouge", start_utility=1.0)
    # band diffs: a - (0.03 * 0.9 + 0.07 * b_top) / 0.1 = 0.5 - 0.48, 0.505 - 0.48, 0.51 - 0.76
    assert res["diff_mean"] == pytest.approx((0.02 + 0.025 - 0.25) / 3) and res["verdict"] == "inconclusive"
    verdicts = {round(e["floor_fraction"], 3): e["verdict"] for e in res["sensitivity"]}
    # at 0.85 and 0.875 every seed is a - 0.9 < 0 (worse); above 0.88 the diffs are 0.2, 0.205, -0.19 (inconclusive)
    assert verdicts == {0.85: "worse", 0.875: "worse", 0.9: "inconclusive", 0.925: "inconclusive",
                        0.95: "inconclusive"}
    assert res["fragile"] is False and not any(e["flips"] for e in res["sensitivity"])
