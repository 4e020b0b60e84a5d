"""Any SAUConfig field in `unlearn:`, and as a grid axis: validated by SAUConfig itself, named in the run names
before ``-lr<lr>-s<seed>``, and run with its value (a tiny grid on the shared memorised model)."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from sau_trainer.config import SAUConfig
from sau_trainer.pipeline import run_recipe, validate
from sau_trainer.pipeline.schema import RecipeError, grid_axes
from sau_trainer.pipeline.stages import plan

BASE = {"model": {"shape": "tiny"}, "prune": {"enabled": False},
        "unlearn": {"model": ["dense"], "objective": ["npo"], "sau": [True]}}


def recipe(**unlearn) -> dict:
    return {**BASE, "unlearn": {**BASE["unlearn"], **unlearn}}


def names(data: dict) -> list[str]:
    return [t.name for t in plan(validate(data)) if t.kind == "unlearn"]


def test_every_sau_config_field_given_as_a_list_is_an_axis_named_before_the_learning_rate():
    got = names(recipe(sau_redistribution_target=["grad", "update"], sau_alpha=[0.1, 1.0], sau=[False, True]))
    assert got == [f"models/dense-npo-{mode}-sau_alpha={a}-sau_redistribution_target={t}-lr1e-05-s0"
                   for mode in ("plain", "sau") for a in ("0.1", "1") for t in ("grad", "update")]
    # a scalar is a setting, not an axis (the names stay as they were); under args the same as in the section
    assert names(recipe(sau_redistribution_target="update")) == ["models/dense-npo-sau-lr1e-05-s0"]
    assert names(recipe(args={"saliency_granularity": ["batch", "example"]})) == [
        "models/dense-npo-sau-saliency_granularity=batch-lr1e-05-s0",
        "models/dense-npo-sau-saliency_granularity=example-lr1e-05-s0"]
    # per objective: objective_args may give an objective its own list
    got = names(recipe(objective=["npo", "graddiff"], objective_args={"graddiff": {"sau_topk": [0.1, 0.5]}}))
    assert got == ["models/dense-npo-sau-lr1e-05-s0", "models/dense-graddiff-sau-sau_topk=0.1-lr1e-05-s0",
                   "models/dense-graddiff-sau-sau_topk=0.5-lr1e-05-s0"]


def test_a_trainer_setting_given_as_a_list_is_an_axis_too(tmp_path):
    from sau_trainer.pipeline.stages import Context, unlearn_config

    r = validate(recipe(num_train_epochs=[2, 3], weight_decay=[0.0, 0.1]))
    tasks = [t for t in plan(r) if t.kind == "unlearn"]
    assert [t.name for t in tasks] == [f"models/dense-npo-sau-num_train_epochs={e}-weight_decay={w}-lr1e-05-s0"
                                       for e in (2, 3) for w in ("0", "0.1")]
    args = unlearn_config(Context(r, tmp_path, {}), tasks[3].settings, tmp_path / "run")
    assert (args.num_train_epochs, args.weight_decay) == (3.0, 0.1)
    assert r.unlearn.args["num_train_epochs"] == [2.0, 3.0]  # typed as the section's key: one hash for 2 and 2.0
    with pytest.raises(RecipeError, match=r"unlearn.num_train_epochs: every value must be > 0"):
        validate(recipe(num_train_epochs=[0, 3]))
    with pytest.raises(RecipeError, match=r"unlearn.args.seed: set it as unlearn.seed"):
        validate(recipe(args={"seed": 3}))  # the pipeline sets it: it would be given twice


def test_the_axes_are_every_sau_config_field_derived_from_the_dataclass():
    from transformers import TrainingArguments

    own = [f.name for f in dataclasses.fields(SAUConfig)
           if f.name not in {g.name for g in dataclasses.fields(TrainingArguments)} | {"objective", "sau"}]
    assert {"sau_topk_scope", "sau_redistribution", "sau_redistribution_target", "saliency_granularity",
            "saliency_loss"} <= set(own)
    settings = {"sau_topk": 0.3, "sau_alpha": 0.1, "args": {}}
    for name in own:
        default = getattr(SAUConfig(output_dir="unused"), name)
        settings = {**settings, "args": {**settings["args"], name: [default]}} if name not in (
            "sau_topk", "sau_alpha") else {**settings, name: [default]}
    assert [n for n, _ in grid_axes(settings)] == sorted(own)  # alphabetical: run names independent of versions


@pytest.mark.parametrize("unlearn, message", [
    ({"sau_redistribution_target": ["grad", "updat"]}, r"sau_redistribution_target='updat' is not allowed; choose one "
                                                       r"of \['grad', 'update'\]"),
    ({"sau_alpha": [0.1, -1.0]}, r"sau_alpha=-1.0 must be >= 0"),
    ({"sau_topk": 1.5}, r"sau_topk=1.5 must be in \(0, 1\]"),
    ({"args": {"saliency_loss": "nll"}}, r"saliency_loss='nll' is not allowed"),
    ({"sau_topk_scope": ["row", "row"]}, r"unlearn.sau_topk_scope: repeated values"),
    ({"sau_redistribution": []}, r"unlearn.sau_redistribution: the list is empty"),
    ({"objective": ["npo", "rmu"], "retain_loss": "embed_diff"}, r"unlearn, objective npo: retain_loss='embed_diff'"),
])
def test_bad_values_are_refused_by_sau_config_before_any_work(unlearn, message):
    with pytest.raises(RecipeError, match=message):
        validate(recipe(**unlearn))


def test_the_schema_keeps_no_list_of_allowed_sau_values():
    import inspect

    from sau_trainer.pipeline import schema

    source = inspect.getsource(schema)
    for value in ("\"update\"", "'update'", "\"example\"", "\"forget_nll\"", "\"param\""):
        assert value not in source


@pytest.mark.slow
def test_a_grid_over_redistribution_target_and_alpha_runs_each_point_with_its_values(memorized, tmp_path):
    class OneProcess:
        is_main_process, num_processes, device = True, 1, "cpu"

        def wait_for_everyone(self):
            pass

    data = {"name": "grid", "torch_threads": 1, "model": {"name_or_path": str(memorized.model_dir)},
            "data": {"benchmark": "synthetic", "preset": "tiny"},
            "train_target": {"enabled": False}, "train_retain": {"enabled": False},
            "prune": {"method": ["magnitude"], "num_samples": 8, "seq_len": 32, "prune_retain": False},
            "unlearn": {"model": ["sparse"], "objective": ["graddiff"], "sau": [True], "learning_rate": [1e-3],
                        "num_train_epochs": 1, "per_device_train_batch_size": 10, "lr_scheduler_type": "constant",
                        "sau_redistribution_target": ["grad", "update"], "sau_alpha": [0.1, 1.0],
                        "logging_steps": 1000, "args": {"disable_tqdm": True}},
            "evaluate": {"batch_size": 64, "max_new_tokens": 8},
            "report": {"plot": False, "keep_models": "all"}}  # the unlearned weights are read below
    run_recipe(validate(data), tmp_path, state=OneProcess())
    report = json.loads((tmp_path / "report.json").read_text())
    runs = {r["name"]: r for r in report["runs"]}
    expected = {f"magnitude-50-graddiff-sau-sau_alpha={a}-sau_redistribution_target={t}-lr0.001-s0": (float(a), t)
                for a in ("0.1", "1") for t in ("grad", "update")}
    assert set(runs) == set(expected)
    for name, (alpha, target) in expected.items():
        assert runs[name]["grid"] == {"sau_alpha": alpha, "sau_redistribution_target": target}
    models = tmp_path / "stages" / "models"
    w = {name: load_file(str(models / name / "sau_state.safetensors")) for name in expected}
    grad_01, grad_1 = (w[f"magnitude-50-graddiff-sau-sau_alpha={a}-sau_redistribution_target=grad-lr0.001-s0"]
                       for a in ("0.1", "1"))
    keys = [k for k in grad_01 if k.startswith("W/")]
    assert keys
    for k in keys:  # W = 1 + alpha * I_P / I_G with the same saliency: alpha 1 moves W ten times as far from 1
        torch.testing.assert_close(grad_1[k] - 1, 10 * (grad_01[k] - 1), rtol=1e-4, atol=1e-6)
        assert (grad_01[k] > 1).all()
    # the redistribution target reached the trainer: the update-mode run ends with other weights than grad mode
    a = load_file(str(models / "magnitude-50-graddiff-sau-sau_alpha=1-sau_redistribution_target=grad-lr0.001-s0"
                      / "model.safetensors"))
    b = load_file(str(models / "magnitude-50-graddiff-sau-sau_alpha=1-sau_redistribution_target=update-lr0.001-s0"
                      / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
