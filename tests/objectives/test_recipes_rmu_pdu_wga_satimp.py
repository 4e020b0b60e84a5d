"""Recipes name rmu, pdu, wga and satimp, and their SAUConfig fields pass through unlearn.objective_args to
their own runs only; a misspelled field is named."""

import pytest

from sau_trainer.pipeline import RecipeError, validate
from sau_trainer.pipeline import plan as plan_tasks

MINIMAL = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]}}


def test_objectives_and_their_fields_reach_their_runs():
    over = {"rmu": {"rmu_layer": 1, "rmu_trainable_params": r"model\.layers\.1\..*", "rmu_steering_coeff": 6.5},
            "pdu": {"pdu_epsilon": 0.3, "retain_weight": 100.0, "pdu_dual_lr": 5.0, "pdu_dual_update_upon": "epoch"},
            "satimp": {"forget_weight": 1.0, "retain_weight": 0.1, "num_train_epochs": 5}}
    recipe = validate({**MINIMAL, "unlearn": {"objective": ["rmu", "pdu", "wga", "satimp"], "objective_args": over}})
    tasks = [t for t in plan_tasks(recipe) if t.kind == "unlearn"]
    assert {t.settings["objective"] for t in tasks} == {"rmu", "pdu", "wga", "satimp"}
    for t in tasks:
        obj, args = t.settings["objective"], t.settings["unlearn"]["args"]
        want = {k: v for k, v in over.get(obj, {}).items() if k != "num_train_epochs"}
        assert args == want, obj
    assert {t.settings["unlearn"]["num_train_epochs"] for t in tasks if t.settings["objective"] == "satimp"} == {5.0}


def test_a_misspelled_field_is_named():
    with pytest.raises(RecipeError, match=r"unknown key 'unlearn.objective_args.rmu.rmu_layers'.*rmu_layer"):
        validate({**MINIMAL, "unlearn": {"objective": ["rmu"], "objective_args": {"rmu": {"rmu_layers": 7}}}})
