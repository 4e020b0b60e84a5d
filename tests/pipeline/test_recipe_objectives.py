"""Recipes name every registered objective, and per-objective settings (unlearn.objective_args) reach only
that objective's runs; bad ones are rejected before any work."""

from pathlib import Path

import pytest

from sau_trainer.objectives import OBJECTIVES
from sau_trainer.pipeline import RecipeError, load_recipe, plan, validate

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]}}


def _unlearn_tasks(recipe):
    return {t.name: t for t in plan(recipe) if t.kind == "unlearn"}


def test_the_demo_plans_every_registered_objective():
    names = sorted(OBJECTIVES)
    recipe = load_recipe(ROOT / "recipes/demo.yaml", [f"unlearn.objective=[{','.join(names)}]"])
    planned = {t.settings["objective"] for t in _unlearn_tasks(recipe).values()}
    assert planned == set(names)


def test_objective_args_reach_only_that_objectives_runs():
    base = {**MINIMAL, "unlearn": {"objective": ["graddiff", "undial"], "learning_rate": [1e-3, 3e-3]}}
    plain = _unlearn_tasks(validate(base))
    over = {"undial": {"learning_rate": 1e-4, "undial_beta": 3, "num_train_epochs": 2},
            "idkdpo": {"idkdpo_beta": 0.5}}  # not in unlearn.objective: carried, unused
    tasks = _unlearn_tasks(validate({**base, "unlearn": {**base["unlearn"], "objective_args": over}}))
    undial = [t for t in tasks.values() if t.settings["objective"] == "undial"]
    assert {t.settings["learning_rate"] for t in undial} == {1e-4}  # the objective's own learning-rate axis
    assert len(undial) == 2 * 2  # (dense, magnitude) x (plain, sau) x one learning rate
    for t in undial:
        assert t.settings["unlearn"]["num_train_epochs"] == 2.0
        assert t.settings["unlearn"]["args"]["undial_beta"] == 3
    for name, t in tasks.items():  # GradDiff's runs are the same tasks as without objective_args (same cache)
        if t.settings["objective"] == "graddiff":
            assert t.settings == plain[name].settings


@pytest.mark.parametrize("over,message", [
    ({"undail": {"undial_beta": 3}}, "'undail' is not one of .*did you mean 'undial'"),
    ({"undial": {"undial_bta": 3}}, "unknown key 'unlearn.objective_args.undial.undial_bta'.*undial_beta"),
    ({"undial": {"seed": 3}}, "objective_args.undial.seed: set by the pipeline"),
    ({"undial": {"learning_rate": [1e-4, -1.0]}}, "learning_rate: values must be > 0"),
    ({"undial": {"num_train_epochs": "many"}}, "objective_args.undial.num_train_epochs: expected a number"),
    ({"undial": 3}, "objective_args.undial: expected a mapping"),
])
def test_bad_objective_args_are_named(over, message):
    with pytest.raises(RecipeError, match=message):
        validate({**MINIMAL, "unlearn": {"objective_args": over}})


def test_an_unknown_objective_lists_the_valid_ones():
    with pytest.raises(RecipeError, match="'idk_dpo' is not one of .*did you mean 'idkdpo'"):
        load_recipe(ROOT / "recipes/demo.yaml", ["unlearn.objective=[idk_dpo]"])


@pytest.mark.parametrize("where", ["args", "objective_args"])
def test_an_idk_file_that_does_not_exist_is_rejected_with_the_recipe(tmp_path, where):
    given = {"idk_path": str(tmp_path / "idk.jsonl")}
    unlearn = {"args": given} if where == "args" else {"objective_args": {"idkdpo": given}}
    with pytest.raises(RecipeError, match=f"unlearn.{where}.*idk_path: no file at"):
        validate({**MINIMAL, "unlearn": {"objective": ["idkdpo"], **unlearn}})
    (tmp_path / "idk.jsonl").write_text("No idea.\n")
    validate({**MINIMAL, "unlearn": {"objective": ["idkdpo"], **unlearn}})

def test_rmu_pdu_wga_satimp_fields_reach_their_runs():
    over = {"rmu": {"rmu_layer": 1, "rmu_trainable_params": r"model\.layers\.1\..*", "rmu_steering_coeff": 6.5},
            "pdu": {"pdu_epsilon": 0.3, "retain_weight": 100.0, "pdu_dual_lr": 5.0, "pdu_dual_update_upon": "epoch"},
            "satimp": {"forget_weight": 1.0, "retain_weight": 0.1, "num_train_epochs": 5}}
    recipe = validate({**MINIMAL, "unlearn": {"objective": ["rmu", "pdu", "wga", "satimp"], "objective_args": over}})
    tasks = [t for t in plan(recipe) if t.kind == "unlearn"]
    assert {t.settings["objective"] for t in tasks} == {"rmu", "pdu", "wga", "satimp"}
    for t in tasks:
        obj, args = t.settings["objective"], t.settings["unlearn"]["args"]
        want = {k: v for k, v in over.get(obj, {}).items() if k != "num_train_epochs"}
        assert args == want, obj
    assert {t.settings["unlearn"]["num_train_epochs"] for t in tasks if t.settings["objective"] == "satimp"} == {5.0}


def test_a_misspelled_objective_field_is_named():
    with pytest.raises(RecipeError, match=r"unknown key 'unlearn.objective_args.rmu.rmu_layers'.*rmu_layer"):
        validate({**MINIMAL, "unlearn": {"objective": ["rmu"], "objective_args": {"rmu": {"rmu_layers": 7}}}})
