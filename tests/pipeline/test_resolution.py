"""Metric resolution (SPEC section 7): the values a KS p-value of n vs n examples can take, its step near a value,
and whether an effect is smaller than one step. Expected values are counted by hand or were measured in runs."""

import math

import pytest

from sau_trainer.pipeline.resolution import below_resolution, ks_pvalues, ks_step, metric_resolution


def test_ks_pvalues_of_tiny_samples_match_counting_the_interleavings():
    # n = 2: C(4, 2) = 6 orders; xxyy and yyxx have D = 1, the other 4 D = 1/2 -> P(D >= 1) = 2/6
    assert ks_pvalues(2) == pytest.approx((1.0, 1 / 3))
    # n = 3: C(6, 3) = 20 walks of 3 up and 3 down steps; the 8 made of up-down or down-up pairs never leave
    # [-1, 1] (D = 1/3), so P(D >= 2/3) = 12/20; the 2 walks xxxyyy, yyyxxx have D = 1 -> 2/20
    assert ks_pvalues(3) == pytest.approx((1.0, 0.6, 0.1))


def test_twenty_forget_examples_give_twenty_values_and_the_ones_the_study_saw():
    ps = ks_pvalues(20)
    assert len(ps) == 20 and ps[0] == pytest.approx(1.0) and sum(p < 1 - 1e-12 for p in ps) == 19
    for seen in (0.081, 0.175, 0.336, 0.571, 0.832, 0.983):  # the 6 values 126 study runs produced (issue 26)
        assert min(abs(p - seen) for p in ps) < 5e-4


def test_the_step_near_a_value_is_the_smaller_log10_gap_to_a_neighbour():
    # nearest to log10(0.34) is 0.3356 (D = 6/20); neighbours 0.5713 (D = 5/20) and 0.1745 (D = 7/20):
    # log10 gaps 0.2309 and 0.2839 -> 0.2309
    s = ks_step(20, math.log10(0.34))
    assert 10 ** s["nearest"] == pytest.approx(0.3356, abs=1e-4)
    assert 10 ** s["above"] == pytest.approx(0.5713, abs=1e-4) and 10 ** s["below"] == pytest.approx(0.1745, abs=1e-4)
    assert s["step"] == pytest.approx(0.2309, abs=1e-3)
    # on the p-value scale near 0.34: gaps 0.2357 and 0.1611 -> 0.1611
    assert ks_step(20, 0.34, log=False)["step"] == pytest.approx(0.1611, abs=1e-3)
    # at the top, 1 has one neighbour: the n = 3 values 1, 0.6 -> 1 - 0.6
    assert ks_step(3, 1.0, log=False) == {"nearest": 1.0, "below": pytest.approx(0.6), "above": None,
                                         "step": pytest.approx(0.4)}


def test_an_effect_is_below_the_resolution_when_it_is_smaller_than_the_step_there():
    near = math.log10(0.34)
    assert below_resolution(0.16, "forget_quality", 20, near, log=True) is True  # the study's +0.16 < 0.23
    assert below_resolution(-0.30, "forget_quality", 20, near, log=True) is False
    assert below_resolution(0.01, "wmdp_acc", 50) is True and below_resolution(0.03, "wmdp_acc", 50) is False  # 1/50
    assert below_resolution(0.001, "forget_rouge", 20) is None  # a mean: no fixed step
    assert below_resolution(0.1, "forget_quality", 20) is None  # a KS step needs the value it is read at


def test_metric_resolution_says_what_each_kind_can_resolve():
    fq = metric_resolution("forget_quality", 20, math.log10(0.34), log=True)
    assert fq["kind"] == "ks" and fq["values"] == 20 and fq["step"] == pytest.approx(0.2309, abs=1e-3)
    assert fq["note"].startswith("KS p-value of 20 vs 20 examples: 20 values (19 below 1)") and "log10" in fq["note"]
    assert metric_resolution("mmlu_acc", 40)["step"] == 1 / 40 and metric_resolution("mmlu_acc", 40)["values"] == 41
    rouge = metric_resolution("forget_rouge", 40)
    assert rouge["kind"] == "mean" and rouge["step"] is None and "1/40" in rouge["note"]
    assert metric_resolution("something_else", 5)["kind"] == "unknown"
    with pytest.raises(ValueError, match="positive integer"):
        metric_resolution("forget_quality", 0)
