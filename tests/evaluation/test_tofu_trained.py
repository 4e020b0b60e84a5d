"""The protocol on trained tiny models: the model trained on `full` remembers the forget set, the retain
model (trained without it) does not, and forget quality tells them apart."""

import json

import pytest

from sau_trainer.evaluation import evaluate_tofu, forget_quality_from_results

RETAIN_SPLITS = ("retain90", "real_authors_perturbed", "world_facts_perturbed")


@pytest.fixture(scope="module")
def evaluations(memorized, trained_model):
    retain = trained_model(RETAIN_SPLITS)
    out = {}
    for name, trained in (("full", memorized), ("retain", retain)):
        out[name] = evaluate_tofu(trained.load_model(), trained.tokenizer, trained.benchmark, forget_split="forget10",
                                  batch_size=32, max_new_tokens=40, show_progress=False)
    print("\n" + json.dumps({k: v["summary"] for k, v in out.items()}, indent=1))
    return out


@pytest.mark.slow
def test_full_model_remembers_the_forget_set_the_retain_model_does_not(evaluations):
    full, retain = evaluations["full"]["summary"], evaluations["retain"]["summary"]
    assert full["forget_rouge"] > 0.8
    assert retain["forget_rouge"] < full["forget_rouge"] - 0.25
    assert full["forget_probability"] > 2 * retain["forget_probability"]
    assert full["extraction_strength"] > retain["extraction_strength"]
    # both know the retain people and the general facts they were trained on
    for s in (full, retain):
        assert s["retain_rouge"] > 0.8 and s["real_authors_rouge"] > 0.8 and s["world_facts_rouge"] > 0.8
        assert s["model_utility"] > 0.3


@pytest.mark.slow
def test_forget_quality_separates_full_from_retain_model(evaluations):
    fq = forget_quality_from_results(evaluations["full"], evaluations["retain"])
    print(f"forget quality of the full model against the retain model: {fq:.3g}")
    assert fq < 0.01
    assert forget_quality_from_results(evaluations["retain"], evaluations["retain"]) == 1.0
    # the full model prefers the true paraphrase to the perturbed answers on the forget set; the retain model less
    full_lr = evaluations["full"]["per_example"]["forget"]["log_truth_ratio"]
    retain_lr = evaluations["retain"]["per_example"]["forget"]["log_truth_ratio"]
    assert sum(full_lr) / len(full_lr) < sum(retain_lr) / len(retain_lr)


@pytest.mark.slow
def test_membership_inference_on_tofu_forget_against_holdout(evaluations):
    from sau_trainer.evaluation import reference_metrics

    full, retain = evaluations["full"]["summary"], evaluations["retain"]["summary"]
    attacks = ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm")
    # the model trained on the forget people tells their answers from the holdout people's; the retain model,
    # which saw neither, much less
    for key in attacks:
        assert full[key] > 0.9, key
        assert retain[key] < full[key] - 0.2, key
    assert full["exact_memorization"] > retain["exact_memorization"] + 0.1
    privleak = reference_metrics(evaluations["full"], evaluations["retain"])["privleak"]
    print(f"TOFU privleak of the full model against the retain model: {privleak:.1f}")
    assert privleak < -50
    assert reference_metrics(evaluations["retain"], evaluations["retain"])["privleak"] == 0.0
    assert len(evaluations["full"]["per_example"]["mia"]["holdout"]["loss"]) == 20  # holdout10: 2 people x 10
