"""MUSE on synthetic-muse with trained tiny models: the model trained on the forget texts against the
retain model (which never saw them)."""

import json

import pytest


@pytest.fixture(scope="module")
def muse_evaluations(muse_models, muse_splits):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sau_trainer.evaluation import attach_forget_quality, evaluate_muse

    out = {}
    for role in ("retain", "target"):
        model = AutoModelForCausalLM.from_pretrained(muse_models[role])
        tok = AutoTokenizer.from_pretrained(muse_models[role])
        out[role] = evaluate_muse(model, tok, muse_splits, batch_size=16, show_progress=False,
                                  retain_results=out.get("retain"))
    out["retain"] = attach_forget_quality(out["retain"], out["retain"])  # the reference against itself
    print("\n" + json.dumps({k: v["summary"] for k, v in out.items()}, indent=1))
    return out


@pytest.mark.slow
def test_target_remembers_the_forget_texts_the_retain_model_does_not(muse_evaluations):
    target, retain = muse_evaluations["target"]["summary"], muse_evaluations["retain"]["summary"]
    assert target["forget_verbmem_rouge"] >= retain["forget_verbmem_rouge"] + 0.1
    assert target["forget_knowmem_rouge"] >= retain["forget_knowmem_rouge"] + 0.1
    assert target["forget_verbmem_rouge"] > 0.9 and target["extraction_strength"] > 0.9
    assert target["exact_memorization"] > retain["exact_memorization"] + 0.3
    # privleak: clearly negative for the target (the forget texts look like training data), 0 for the retain model
    assert target["privleak"] < -50
    assert retain["privleak"] == 0.0
    assert target["mia_min_k"] > 0.9 and abs(retain["mia_min_k"] - 0.5) < 0.3
    # the retain metrics do not separate them: both were trained on retain2
    gap = abs(target["retain_knowmem_rouge"] - retain["retain_knowmem_rouge"])
    assert gap < 0.2 and gap < (target["forget_knowmem_rouge"] - retain["forget_knowmem_rouge"]) / 2
