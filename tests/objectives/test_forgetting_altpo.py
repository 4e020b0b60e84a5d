"""AltPO at its defaults (beta 0.1, alpha 1), with the benchmark's perturbed answers as alternates, makes the
memorised model forget, dense and 50% sparse, plain and SAU: the forget answers' NLL rises well beyond what the
retain term alone does by interference (GradDiff with forget_weight=0 under the same settings), the loss stays
finite, pruned entries stay exactly zero and the retain NLL stays within 1 nat/token of its start.

Settings as the idk/undial/ceu checks (forgetting.py): lr 3e-3, 16 steps of batch 4 over
forget10 (20 rows), constant schedule, AdamW, clipping at 1. One fast case (sparse + SAU); the rest slow.
"""

import math

import pytest
from forgetting import BATCH, LR, STEPS, answer_nll, control
from sau_testing import make_trainer, qa

from sau_trainer.data.alternates import attach_perturbed

CASES = [(True, True)] + [pytest.param(sparse, sau, marks=pytest.mark.slow)
                          for sparse in (False, True) for sau in (False, True) if (sparse, sau) != (True, True)]


def _run(memorized, out, sparse: bool, sau: bool) -> dict:
    from sau_trainer.masks import prunable_parameters
    from sau_trainer.pruning import prune_model

    tok, bench = memorized.tokenizer, memorized.benchmark
    forget = qa(bench, "forget10")
    rows = attach_perturbed(forget, bench["forget10_perturbed"])  # TOFU's perturbed answers as the alternates
    retain = qa(bench, "retain90")
    model = memorized.load_model()
    if sparse:
        prune_model(model, "magnitude", sparsity=0.5)
    pruned = {n: p.detach() == 0 for n, p in prunable_parameters(model).items()}
    before = {"forget": answer_nll(model, tok, forget), "retain": answer_nll(model, tok, retain[:40])}
    trainer = make_trainer(model, tok, rows, retain, out, objective="altpo", sau=sau, learning_rate=LR,
                           max_steps=STEPS, per_device_train_batch_size=BATCH)
    trainer.train()
    assert trainer.objective.source == "perturbed"
    after = {"forget": answer_nll(model, tok, forget), "retain": answer_nll(model, tok, retain[:40])}
    params = prunable_parameters(model)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"before": before, "after": after, "finite": all(math.isfinite(h["loss"]) for h in logs),
            "zeros_kept": all(bool((params[n].detach()[m] == 0).all()) for n, m in pruned.items()),
            "sparsity": sum(int(m.sum()) for m in pruned.values())}


@pytest.mark.parametrize("sparse,sau", CASES)
def test_altpo_forgets_beyond_retain_interference(memorized, tmp_path, tmp_path_factory, sparse, sau):
    ctrl = control(memorized, tmp_path_factory, sparse, sau)
    res = _run(memorized, tmp_path, sparse, sau)
    rise = res["after"]["forget"] - res["before"]["forget"]
    ctrl_rise = ctrl["after"]["forget"] - ctrl["before"]["forget"]
    print(f"altpo {'sparse' if sparse else 'dense'} {'sau' if sau else 'plain'}: forget NLL "
          f"{res['before']['forget']:.3f} -> {res['after']['forget']:.3f} (rise {rise:.3f}; control {ctrl_rise:.3f}); "
          f"retain NLL {res['before']['retain']:.3f} -> {res['after']['retain']:.3f}")
    assert res["before"]["forget"] < 0.2  # the model has memorised the forget answers
    assert res["finite"]
    assert res["zeros_kept"] and (res["sparsity"] > 0) == sparse
    assert rise > 0.3 and rise > 3 * max(ctrl_rise, 0.0)
    assert res["after"]["retain"] - res["before"]["retain"] < 1.0
