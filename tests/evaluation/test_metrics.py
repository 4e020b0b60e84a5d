"""Each TOFU metric against hand-computed values on crafted log-likelihoods."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from sau_trainer.evaluation import metrics as M


def test_probability_is_length_normalised():
    # an answer of 4 tokens with total NLL 2.0 has mean NLL 0.5
    nll = M.mean_nll(torch.tensor([2.0, 0.0, 3.0]), torch.tensor([4, 1, 0]))
    assert nll.tolist() == [0.5, 0.0, M.MAX_NLL]  # no labelled token: probability 0, not a division by 0
    assert torch.allclose(M.probability(nll), torch.tensor([math.exp(-0.5), 1.0, 0.0], dtype=torch.float64))


def test_normalised_probability_hand_values():
    # p_a = e^-1, perturbed e^-2, e^-3, e^-1  ->  e^-1 / (2 e^-1 + e^-2 + e^-3)
    got = M.normalised_probability([1.0, 0.5], [[2.0, 3.0, 1.0], [0.5, 0.5, 0.5]])
    e = math.exp
    assert got[0].item() == pytest.approx(e(-1) / (2 * e(-1) + e(-2) + e(-3)), rel=1e-12)
    assert got[1].item() == pytest.approx(0.25, rel=1e-12)


def test_normalised_probability_survives_underflow():
    # every probability underflows to exactly 0 in float64; the ratio is still defined
    assert math.exp(-2000.0) == 0.0
    got = M.normalised_probability([2000.0, 5000.0], [[2001.0, 2001.0, 2001.0], [5000.0, 4999.0, 6000.0]])
    assert torch.isfinite(got).all()
    assert got[0].item() == pytest.approx(1 / (1 + 3 * math.exp(-1)), rel=1e-12)
    assert got[1].item() == pytest.approx(1 / (2 + math.e + math.exp(-1000)), rel=1e-12)


def test_truth_ratio_in_log_space():
    # log R = NLL(paraphrased) - mean_j NLL(perturbed_j)
    log_r = M.log_truth_ratio([1.0, 3.0, 2.0], [[2.0, 4.0], [1.0, 1.0], [2.0, 2.0]])
    assert log_r.tolist() == [-2.0, 2.0, 0.0]
    r = np.exp([-2.0, 2.0, 0.0])
    assert M.truth_ratio_forget(log_r) == pytest.approx(np.mean(np.minimum(r, 1 / r)), rel=1e-12)
    assert M.truth_ratio_retain(log_r) == pytest.approx(np.mean(np.maximum(0, 1 - r)), rel=1e-12)
    assert M.truth_ratio_retain(log_r) == pytest.approx((1 - math.exp(-2)) / 3, rel=1e-12)


def test_truth_ratio_ragged_perturbed_lists():
    log_r = M.log_truth_ratio([1.0, 1.0], [[2.0], [1.0, 2.0, 6.0]])
    assert log_r.tolist() == [-1.0, -2.0]


def test_truth_ratio_no_nan_when_probabilities_underflow():
    # after aggressive unlearning every probability is 0.0: raw ratios would be 0/0
    para = [900.0, 1200.0, float("inf"), float("nan")]
    pert = [[905.0, 903.0], [1100.0, 1300.0], [800.0, 800.0], [float("nan"), 3.0]]
    with np.errstate(all="ignore"):
        assert np.isnan(np.exp(-np.array(pert[0])).mean() / np.exp(-para[0]))
    log_r = M.log_truth_ratio(para, pert)
    assert torch.isfinite(log_r).all()
    assert log_r[0].item() == pytest.approx(-4.0)
    assert log_r[1].item() == pytest.approx(0.0)
    assert log_r[2].item() == pytest.approx(M.MAX_NLL - 800.0)  # an infinite NLL counts as MAX_NLL
    for v in (M.truth_ratio_forget(log_r), M.truth_ratio_retain(log_r)):
        assert math.isfinite(v)
    assert math.isfinite(M.forget_quality(log_r, log_r + 1))


def test_forget_quality_is_ks_pvalue_on_raw_ratios():
    rng = np.random.default_rng(0)
    r_model = np.exp(rng.normal(-1.0, 0.5, size=40))
    r_retain = np.exp(rng.normal(0.0, 0.5, size=35))
    expected = scipy.stats.ks_2samp(r_model, r_retain).pvalue
    got = M.forget_quality(np.log(r_model), np.log(r_retain))
    assert got == pytest.approx(expected, rel=1e-12)
    assert got < 0.05
    assert M.forget_quality(np.log(r_model), np.log(r_model)) == 1.0
    with pytest.raises(ValueError, match="at least one finite"):
        M.forget_quality([float("nan")], [0.0])


def test_harmonic_mean_and_model_utility():
    assert M.harmonic_mean([0.5, 1.0, 0.25]) == pytest.approx(3 / (2 + 1 + 4))
    assert M.harmonic_mean([0.5, 0.0, 0.9]) == 0.0
    assert M.harmonic_mean([0.5, float("nan")]) == 0.0
    values = dict(zip(M.MODEL_UTILITY_COMPONENTS, [0.9, 0.8, 0.5, 0.6, 1.0, 0.4, 0.7, 0.3, 0.2], strict=True))
    expected = 9 / sum(1 / v for v in values.values())
    assert M.model_utility(values) == pytest.approx(expected, rel=1e-12)
    assert M.model_utility({**values, "world_facts_rouge": 0.0}) == 0.0
    with pytest.raises(KeyError, match="retain_rouge"):
        M.model_utility({k: v for k, v in values.items() if k != "retain_rouge"})


def test_extraction_strength_hand_values():
    # rows: all correct -> 1; last token wrong -> 0; [1,0,1,1] -> k=2 -> 0.5; [0,1,1] (3 tokens) -> 1 - 1/3
    correct = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    es = M.extraction_strength(correct, mask)
    assert es.tolist() == pytest.approx([1.0, 0.0, 0.5, 2 / 3, 0.0])


def test_answer_token_stats_match_manual_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 5, -100, -100]])
    stats = M.answer_token_stats(logits, labels)
    logp = torch.log_softmax(logits, -1)
    expected0 = -(logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 1])
    expected1 = -(logp[1, 0, 2] + logp[1, 1, 5])
    assert stats["nll_sum"].tolist() == pytest.approx([expected0.item(), expected1.item()], rel=1e-6)
    assert stats["n_tokens"].tolist() == [3, 2]
    assert stats["correct"][0, 1].item() == (logits[0, 1].argmax().item() == 3)
    assert not stats["mask"][0, 0] and stats["mask"][0, 1]


def test_rouge_l_recall():
    refs = ["Mira Talven was born in the city of Oslen.", "The capital of Norlund is Vessa."]
    got = M.rouge_l_recall(["Mira Talven was born in Oslen.", ""], refs)
    assert got[0] == pytest.approx(6 / 9)  # LCS of 6 tokens over a 9-token reference
    assert got[1] == 0.0
    assert M.rouge_l_recall(["The capitals of Norlund is Vessa"], refs[1:]) == [1.0]  # stemmer on
