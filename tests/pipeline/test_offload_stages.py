"""prune.offload and evaluate.device_map (recipe settings for a model larger than one device, the 70B recipe): the
prune stage with offload gives the same masks and weights as without and hands the device to the layer-by-layer
pruner; the evaluate stage with device_map="auto" gives the same summary; neither setting changes a hash it
should not; a wrong type is refused. On the CPU with a tiny random Llama: what moves to a GPU is not exercised."""

import json
from pathlib import Path

import pytest
import torch

from sau_trainer.pipeline import RecipeError, plan, stage_runs, validate
from sau_trainer.pipeline import stages as stages_mod
from sau_trainer.pipeline.stages import Context


class OneProcess:
    is_main_process, num_processes, device = True, 1, torch.device("cpu")

    def wait_for_everyone(self):
        pass


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A random tiny Llama saved with the tests' tokenizer: a ready-made model (no training stage)."""
    from sau_trainer.modeling import build_llama

    path = tmp_path_factory.mktemp("tiny-model")
    build_llama("tiny", tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def recipe_of(tiny_dir, prune=None, evaluate=None):
    return validate({
        "model": {"name_or_path": tiny_dir, "dtype": "float32"},
        "train_target": {"enabled": False}, "train_retain": {"enabled": False},
        "prune": {"method": ["wanda"], "num_samples": 8, "seq_len": 32, "batch_size": 4, "prune_retain": False,
                  **(prune or {})},
        "unlearn": {"enabled": False},
        "evaluate": {"batch_size": 16, "max_new_tokens": 4, "max_length": 64, **(evaluate or {})},
    })


def run_task(recipe, name, out_dir: Path):
    tasks = {t.name: t for t in plan(recipe)}
    ctx = Context(recipe, out_dir, tasks, state=OneProcess())
    out = ctx.task_dir(name)
    out.mkdir(parents=True)
    task = tasks[name]
    return task, stages_mod.STAGES[task.kind].fn(ctx, task, out), out


def test_prune_with_offload_gives_the_same_masks_and_weights(tiny_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import sau_trainer.pruning as pruning

    seen = []
    real = pruning.prune_model

    def spy(model, *args, **kwargs):
        seen.append((kwargs.get("device"), next(model.parameters()).device))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(pruning, "prune_model", spy)
    name = "models/finetuned+wanda-50"
    plain_task, plain, plain_out = run_task(recipe_of(tiny_dir), name, tmp_path / "plain")
    off_task, off, off_out = run_task(recipe_of(tiny_dir, prune={"offload": True}), name, tmp_path / "off")
    # the device goes to the pruner only with offload; the model itself stays on the CPU
    assert seen == [(None, torch.device("cpu")), (torch.device("cpu"), torch.device("cpu"))]
    assert "offload" not in plain_task.settings and off_task.settings["offload"] is True
    assert plain["measured_sparsity"] == off["measured_sparsity"] == pytest.approx(0.5, abs=0.01)
    a, b = load_file(plain_out / "model.safetensors"), load_file(off_out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = load_file(plain_out / "sparsity_masks.safetensors"), load_file(off_out / "sparsity_masks.safetensors")
    assert len(ma) == 14 and ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


def test_evaluate_with_device_map_auto_gives_the_same_summary(tiny_dir, tmp_path, monkeypatch):
    placed = []
    real = stage_runs.load_model  # where the evaluate stage's function reads it

    def spy(*args, **kwargs):
        placed.append((args[2:], kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(stage_runs, "load_model", spy)
    plain_task, plain, plain_out = run_task(recipe_of(tiny_dir), "eval/finetuned", tmp_path / "plain")
    mapped = recipe_of(tiny_dir, evaluate={"device_map": "auto"})
    map_task, mapped_info, map_out = run_task(mapped, "eval/finetuned", tmp_path / "mapped")
    # from_pretrained(device_map="auto") instead of .to(device) (without a GPU accelerate leaves it on the CPU)
    assert placed == [((torch.device("cpu"),), {"device_map": None}), ((None,), {"device_map": "auto"})]
    assert plain_task.settings == map_task.settings  # a placement: the evaluation's hash does not change
    a = json.loads((plain_out / "results.json").read_text())["summary"]
    b = json.loads((map_out / "results.json").read_text())["summary"]
    assert a == b and len(a) > 5


def test_the_settings_enter_hashes_only_where_they_change_outputs(tiny_dir):
    base = {t.name: t.settings for t in plan(recipe_of(tiny_dir))}
    off = {t.name: t.settings for t in plan(recipe_of(tiny_dir, prune={"offload": True},
                                                      evaluate={"device_map": "auto"}))}
    assert base.keys() == off.keys()
    assert [n for n in base if base[n] != off[n]] == ["models/finetuned+wanda-50"]
    # offload false (the default) adds no key: caches made before the setting existed stay valid
    assert base == {t.name: t.settings for t in plan(recipe_of(tiny_dir, prune={"offload": False}))}


def test_wrong_types_are_refused_with_the_key(tiny_dir):
    with pytest.raises(RecipeError, match=r"prune\.offload: expected true or false"):
        recipe_of(tiny_dir, prune={"offload": "yes"})
    with pytest.raises(RecipeError, match=r"evaluate\.device_map: expected"):
        recipe_of(tiny_dir, evaluate={"device_map": 3})


def test_device_map_with_robustness_attacks_is_refused(tiny_dir):
    """Attacked copies load on one device: a device_map that would silently not apply to them is an error."""
    with pytest.raises(RecipeError, match=r"evaluate\.device_map='auto' with evaluate\.robustness"):
        recipe_of(tiny_dir, evaluate={"device_map": "auto", "robustness": ["quantize:int8"]})
