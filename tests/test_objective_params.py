"""Objectives own their settings (a `params` dataclass in each objective's file); the flat SAUConfig names they
had (``npo_beta``, ...) keep working from Python and in recipes, and a recipe spells a setting either way with
the same task hash. Also the settings' single owners: SAUConfig's defaults for the recipe and `compute_sau_state`,
the compensated optimizers' state bytes for the memory estimate, the pruning plan for what holds masks."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from sau_trainer import SAUConfig
from sau_trainer.config import FLAT_NAMES, check_settings, field_default, own_fields, settings_problems
from sau_trainer.objectives import OBJECTIVES
from sau_trainer.objectives.params import flat_names
from sau_trainer.pipeline import validate
from sau_trainer.pipeline.schema import RecipeError, UnlearnSection

# The flat names SAUConfig had as fields before the objectives owned them (SPEC section 9: they keep working)
FORMER_FIELDS = {
    "npo_beta": ("npo", "beta", 0.1), "simnpo_beta": ("simnpo", "beta", 4.5),
    "simnpo_delta": ("simnpo", "delta", 0.0), "rmu_layer": ("rmu", "layer", None),
    "rmu_steering_coeff": ("rmu", "steering_coeff", 2.0), "rmu_trainable_params": ("rmu", "trainable_params", ".*"),
    "rmu_mse_mean": ("rmu", "mse_mean", "example"), "pdu_epsilon": ("pdu", "epsilon", None),
    "pdu_dual_lr": ("pdu", "dual_lr", 1.0), "pdu_dual_warmup_epochs": ("pdu", "dual_warmup_epochs", 5),
    "pdu_primal_dual": ("pdu", "primal_dual", True), "pdu_dual_update_upon": ("pdu", "dual_update_upon", "step"),
    "pdu_shifted_mask": ("pdu", "shifted_mask", False), "wga_beta": ("wga", "beta", 1.0),
    "satimp_beta1": ("satimp", "beta1", 5.0), "satimp_beta2": ("satimp", "beta2", 1.0),
    "idk_path": ("idkdpo", "idk_path", None), "idk_pairing": ("idkdpo", "pairing", "epoch"),
    "idkdpo_beta": ("idkdpo", "beta", 0.1), "altpo_beta": ("altpo", "beta", 0.1),
    "alternate_source": ("altpo", "source", "auto"), "alternate_column": ("altpo", "column", None),
    "alternate_prompt": ("altpo", "prompt", None), "alternate_max_new_tokens": ("altpo", "max_new_tokens", 64),
    "undial_beta": ("undial", "beta", 10.0), "undial_label_mask": ("undial", "label_mask", False),
    "ceu_ignore_first_n": ("ceu", "ignore_first_n", 1),
}
CHANGED = {"npo_beta": 0.2, "simnpo_beta": 3.0, "simnpo_delta": 0.5, "rmu_layer": 1, "rmu_steering_coeff": 4.0,
           "rmu_trainable_params": "model.*", "rmu_mse_mean": "open-unlearning", "pdu_epsilon": 0.5,
           "pdu_dual_lr": 0.5, "pdu_dual_warmup_epochs": 2, "pdu_primal_dual": False, "pdu_dual_update_upon": "epoch",
           "pdu_shifted_mask": True, "wga_beta": 2.0, "satimp_beta1": 4.0, "satimp_beta2": 2.0, "idk_path": None,
           "idk_pairing": "fixed", "idkdpo_beta": 0.2, "altpo_beta": 0.5, "alternate_source": "perturbed",
           "alternate_column": "alt", "alternate_prompt": None, "alternate_max_new_tokens": 8, "undial_beta": 5.0,
           "undial_label_mask": True, "ceu_ignore_first_n": 2}


def _config(**kw):
    return SAUConfig(output_dir="unused", report_to=[], use_cpu=True, **kw)


def test_the_settings_live_in_the_objectives_and_every_former_name_is_there():
    assert set(FLAT_NAMES) == set(FORMER_FIELDS)
    assert not set(FORMER_FIELDS) & set(own_fields()), "SAUConfig has no objective's field of its own"
    for flat, (objective, name, default) in FORMER_FIELDS.items():
        params = OBJECTIVES[objective].params
        field = {f.name: f for f in dataclasses.fields(params)}[name]
        assert field.default == default and field.metadata["help"] and field.metadata["flat"] == flat
    assert flat_names(OBJECTIVES)["idk_pairing"] == [("idkdpo", "pairing"), ("idknll", "pairing"),
                                                     ("altpo", "pairing")]


@pytest.mark.parametrize("flat", sorted(FORMER_FIELDS))
def test_a_flat_name_sets_its_objectives_param_and_reads_back(flat):
    objective, name, default = FORMER_FIELDS[flat]
    assert getattr(_config(objective=objective), flat) == default
    value = CHANGED[flat]
    config = _config(objective=objective, **{flat: value})
    assert getattr(config, flat) == value
    assert getattr(OBJECTIVES[objective](config).params, name) == value
    nested = _config(objective=objective, objective_args={objective: {name: value}})  # the same setting
    assert getattr(nested, flat) == value and getattr(OBJECTIVES[objective](nested).params, name) == value


def test_one_setting_given_twice_with_two_values_is_one_line():
    with pytest.raises(ValueError, match=r"^npo_beta=0.2 and objective_args\['npo'\]\['beta'\]=0.3 are the same "
                                         r"setting with two values; give one of them$"):
        _config(npo_beta=0.2, objective_args={"npo": {"beta": 0.3}})
    assert _config(npo_beta=0.2, objective_args={"npo": {"beta": 0.2}}).npo_beta == 0.2
    copy = dataclasses.replace(_config(objective="npo", npo_beta=0.3))  # replace passes every flat name back
    assert copy.npo_beta == 0.3 and copy.objective_args == {"npo": {"beta": 0.3}}


def test_errors_name_the_setting_as_it_was_spelled():
    with pytest.raises(ValueError, match=r"^npo_beta=0 must be > 0\.$"):
        _config(npo_beta=0)
    with pytest.raises(ValueError, match=r"^objective_args\.npo\.beta=0 must be > 0\.$"):
        _config(objective_args={"npo": {"beta": 0}})
    with pytest.raises(ValueError, match=r"idk_pairing='fixd' is not allowed; .*did you mean 'fixed'\?"):
        _config(idk_pairing="fixd")
    with pytest.raises(ValueError, match=r"objective_args\.undial\.beta=nan must be a finite number"):
        _config(objective_args={"undial": {"beta": float("nan")}})


def test_every_problem_at_once_and_the_objective_checks_its_own_combinations():
    problems = check_settings({"objective": "pdu", "retain_loss": "kl", "sau_topk": 2.0, "rmu_layer": -1})
    assert any(p.startswith("rmu_layer=-1") for p in problems) and any(p.startswith("sau_topk=2.0") for p in problems)
    assert any("objective='pdu' with retain_loss='kl' needs pdu_epsilon" in p for p in problems)
    assert check_settings({"objective": "pdu", "retain_loss": "kl", "pdu_epsilon": 0.5}) == []
    assert check_settings({"objective": "rmu", "retain_loss": "embed_diff"}) == []
    assert "for objective='npo'" in check_settings({"objective": "npo", "retain_loss": "embed_diff"})[0]
    source = inspect.getsource(settings_problems)
    assert not [name for name in OBJECTIVES if f'"{name}"' in source or f"'{name}'" in source], \
        "SAUConfig's check does not branch on objective names (each objective checks its own)"


MINIMAL = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]}}


def _unlearn_settings(unlearn: dict) -> dict:
    from sau_trainer.pipeline.runner import hash_tasks
    from sau_trainer.pipeline.stages import plan

    tasks = plan(validate({**MINIMAL, "unlearn": {"model": ["dense"], "sau": [True], **unlearn}}))
    hash_tasks(tasks)
    return {t.name: (t.hash, t.settings["unlearn"]) for t in tasks if t.kind == "unlearn"}


def test_a_recipe_spells_a_setting_either_way_with_one_hash():
    flat = _unlearn_settings({"objective": ["npo", "undial"], "objective_args": {"npo": {"npo_beta": 0.2}}})
    nested = _unlearn_settings({"objective": ["npo", "undial"], "objective_args": {"npo": {"beta": 0.2}}})
    assert flat == nested
    npo = next(s for name, (_, s) in nested.items() if "-npo-" in name)
    assert npo["args"] == {"npo_beta": 0.2}  # hashed by its flat name, as before the objectives owned it
    section = _unlearn_settings({"objective": ["npo"], "npo_beta": 0.2})
    assert [h for h, _ in section.values()] == [h for name, (h, _) in flat.items() if "-npo-" in name]


def test_a_recipe_refuses_one_setting_with_two_values_and_names_bad_ones():
    with pytest.raises(RecipeError) as info:
        validate({**MINIMAL, "unlearn": {"objective": ["npo"], "objective_args": {"npo": {"beta": 0.2,
                                                                                         "npo_beta": 0.3}}}})
    assert "unlearn.objective_args.npo: beta=0.2 and npo_beta=0.3 are the same setting with two values" in \
        str(info.value)
    with pytest.raises(RecipeError, match=r"npo_beta=0 must be > 0"):
        validate({**MINIMAL, "unlearn": {"objective": ["npo"], "objective_args": {"npo": {"beta": 0}}}})
    with pytest.raises(RecipeError, match=r"unknown key 'unlearn.objective_args.npo.bta'; did you mean "
                                          r"'unlearn.objective_args.npo.beta'"):
        validate({**MINIMAL, "unlearn": {"objective": ["npo"], "objective_args": {"npo": {"bta": 0.2}}}})


def test_a_swept_param_is_a_grid_axis_named_by_its_flat_name():
    runs = _unlearn_settings({"objective": ["npo"], "objective_args": {"npo": {"beta": [0.1, 0.2]}}})
    assert sorted(runs) == ["models/dense-npo-sau-npo_beta=0.1-lr1e-05-s0",
                            "models/dense-npo-sau-npo_beta=0.2-lr1e-05-s0"]


def test_an_empty_plugins_list_is_accepted_and_changes_no_hash():
    from sau_trainer.pipeline.runner import hash_tasks
    from sau_trainer.pipeline.stages import plan

    def hashes(data):
        tasks = plan(validate(data))
        hash_tasks(tasks)
        return {t.name: t.hash for t in tasks}

    assert validate({**MINIMAL, "plugins": []}).plugins == []
    assert hashes({**MINIMAL, "plugins": []}) == hashes(MINIMAL)


def test_defaults_have_one_owner(monkeypatch):
    from sau_trainer.training.any_trainer import compute_sau_state

    signature = inspect.signature(compute_sau_state).parameters
    assert signature["k"].default == field_default("sau_topk") and signature["alpha"].default == \
        field_default("sau_alpha")
    monkeypatch.setattr(SAUConfig.__dataclass_fields__["sau_topk"], "default", 0.25)
    assert UnlearnSection().sau_topk == 0.25  # the recipe's default is SAUConfig's


def test_the_memory_estimate_reads_the_compensated_optimizers_table(monkeypatch):
    from sau_trainer.pipeline import memory
    from sau_trainer.training.compensated import COMPENSATED_OPTIMIZERS

    assert memory.training_precision("bfloat16", "adamw_torch", True, "kahan_adamw").optimizer == \
        COMPENSATED_OPTIMIZERS["kahan_adamw"].state_bytes
    entry = dataclasses.replace(COMPENSATED_OPTIMIZERS["kahan_adamw"], state_bytes=3.5)
    monkeypatch.setitem(COMPENSATED_OPTIMIZERS, "kahan_adamw", entry)
    assert memory.training_precision("bfloat16", "adamw_torch", True, "kahan_adamw").optimizer == 3.5


def test_the_memory_estimate_counts_masks_from_the_plan_not_the_task_name():
    from sau_trainer.pipeline import memory
    from sau_trainer.pipeline.stages import Task

    prune = Task("prune", "models/cut", {"method": "magnitude"})
    dense = Task("unlearn", "models/a+b", {"source": "task:models/finetuned"}, {"source": "models/finetuned"})
    sparse = Task("unlearn", "models/c", {"source": "task:models/cut"}, {"source": "models/cut"})
    plan = {t.name: t for t in (prune, dense, sparse, Task("train", "models/finetuned", {}))}
    assert memory._holds_masks(sparse, plan) and not memory._holds_masks(dense, plan)


def test_the_saved_sau_settings_keep_their_flat_keys():
    """A checkpoint's SAU state lists the settings that made it; a resumed run compares them, so their keys and
    values stay as before the objectives owned their settings (no objective_args entry for a built-in)."""
    settings = _config(objective="altpo", saliency_loss="objective", altpo_beta=0.5, alternate_source="perturbed",
                       npo_beta=0.2).sau_settings()
    assert settings["altpo_beta"] == 0.5 and settings["alternate_source"] == "perturbed"
    assert settings["npo_beta"] == 0.2 and settings["idk_pairing"] == "epoch" and "objective_args" not in settings
    assert "alternate_column" not in settings  # listed only off its default, as before
    assert _config(objective="rmu", rmu_trainable_params="model.*").sau_settings()["rmu_trainable_params"] == "model.*"
