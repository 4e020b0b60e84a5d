"""idkdpo, idknll, undial and ceu at their defaults make the memorised model forget, dense and 50% sparse,
plain and SAU: the forget answers' NLL rises well beyond what the retain term alone does by interference
(GradDiff with forget_weight=0 under the same settings), the loss stays finite, pruned entries stay exactly
zero, and where there is a retain term the retain NLL stays within 1 nat/token of its start.

Settings (forgetting.py): lr 3e-3, 16 steps of batch 4 over forget10 (20 rows), constant
schedule, AdamW, clipping at 1. One fast case per objective (sparse + SAU, the full machinery); the other
three combinations are marked slow.
"""

import pytest
from forgetting import control, run

# (objective, has a retain term at its defaults)
OBJECTIVES = {"idkdpo": True, "idknll": True, "undial": False, "ceu": False}
FAST = [(obj, True, True) for obj in OBJECTIVES]
SLOW = [pytest.param(obj, sparse, sau, marks=pytest.mark.slow)
        for obj in OBJECTIVES for sparse in (False, True) for sau in (False, True) if (sparse, sau) != (True, True)]


@pytest.mark.parametrize("objective,sparse,sau", FAST + SLOW)
def test_objective_forgets_beyond_retain_interference(memorized, tmp_path, tmp_path_factory, objective, sparse, sau):
    ctrl = control(memorized, tmp_path_factory, sparse, sau)
    res = run(memorized, tmp_path, objective, sparse, sau)
    rise = res["after"]["forget"] - res["before"]["forget"]
    ctrl_rise = ctrl["after"]["forget"] - ctrl["before"]["forget"]
    retain_change = res["after"]["retain"] - res["before"]["retain"]
    print(f"{objective} {'sparse' if sparse else 'dense'} {'sau' if sau else 'plain'}: forget NLL "
          f"{res['before']['forget']:.3f} -> {res['after']['forget']:.3f} (rise {rise:.3f}; control {ctrl_rise:.3f}); "
          f"retain NLL {res['before']['retain']:.3f} -> {res['after']['retain']:.3f}")
    assert res["before"]["forget"] < 0.2  # the model has memorised the forget answers
    assert res["finite"]
    assert res["zeros_kept"] and (res["sparsity"] > 0) == sparse
    assert rise > 0.3 and rise > 3 * max(ctrl_rise, 0.0)
    if OBJECTIVES[objective]:
        assert retain_change < 1.0
