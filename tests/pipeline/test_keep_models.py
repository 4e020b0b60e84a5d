"""report.keep_models: the weights of unlearned models go once nothing reads them, as a run's last step, and
come back (recomputed) when a later run needs them."""

import json
from pathlib import Path

import pytest

from sau_trainer.pipeline.cleanup import MARKER, needed_again, remove_unneeded_weights, weights_removed
from sau_trainer.pipeline.stages import Task

WEIGHTS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
KEPT = ("sparsity_masks.safetensors", "sau_state.safetensors", "training_args.bin", "config.json", "stage.json")


def fake_plan(tmp_path: Path):
    """finetuned -> pruned -> two unlearned runs (dense, sparse) -> evaluations; a quantized attack of the sparse
    run and its evaluation; a push of the sparse run."""
    tasks = [
        Task("train", "models/finetuned", {}),
        Task("prune", "models/finetuned+magnitude-50", {}, {"source": "models/finetuned"}),
        Task("unlearn", "models/dense-npo", {}, {"source": "models/finetuned"}),
        Task("unlearn", "models/sparse-npo", {}, {"source": "models/finetuned+magnitude-50"}),
        Task("attack", "attacks/sparse-npo+quant-int8", {}, {"model": "models/sparse-npo"}),
        Task("evaluate", "eval/dense-npo", {}, {"model": "models/dense-npo"}),
        Task("evaluate", "eval/sparse-npo", {}, {"model": "models/sparse-npo"}),
        Task("evaluate", "eval/sparse-npo+quant-int8", {}, {"model": "attacks/sparse-npo+quant-int8"}),
        Task("push", "push", {}, {"model": "models/sparse-npo", "eval": "eval/sparse-npo"}),
    ]
    for t in tasks:
        folder = tmp_path / t.name
        folder.mkdir(parents=True)
        for name in (*WEIGHTS, *KEPT):
            (folder / name).write_bytes(b"x" * 100)
        if t.name in ("models/sparse-npo", "models/finetuned+magnitude-50", "attacks/sparse-npo+quant-int8"):
            (folder / "sparsity.json").write_text("{}")
    return tasks, lambda name: tmp_path / name


def has_weights(task_dir, name) -> bool:
    return (task_dir(name) / WEIGHTS[0]).is_file()


@pytest.mark.parametrize("push", [True, False])
def test_what_each_policy_removes(tmp_path, push):
    tasks, task_dir = fake_plan(tmp_path)
    if not push:
        tasks = [t for t in tasks if t.kind != "push"]
    done = lambda t: True  # noqa: E731
    assert remove_unneeded_weights(tasks, task_dir, done, "all") == {"models": 0, "bytes": 0}
    assert remove_unneeded_weights(tasks, task_dir, done, "sparse") == {"models": 2, "bytes": 400}
    assert not has_weights(task_dir, "models/dense-npo") and not has_weights(task_dir, "attacks/sparse-npo+quant-int8")
    assert has_weights(task_dir, "models/sparse-npo")
    removed = remove_unneeded_weights(tasks, task_dir, done, "none")
    assert removed["models"] == (0 if push else 1)  # the pushed model stays (a later `sau-trainer push` reads it)
    assert has_weights(task_dir, "models/sparse-npo") == push
    for ref in ("models/finetuned", "models/finetuned+magnitude-50"):  # every run starts from these
        assert has_weights(task_dir, ref) and not weights_removed(task_dir(ref))
    folder = task_dir("models/dense-npo")
    assert all((folder / name).is_file() for name in KEPT)  # masks, config, stage.json
    assert json.loads((folder / MARKER).read_text())["files"] == sorted(WEIGHTS)


def test_a_model_that_a_task_still_has_to_read_is_kept(tmp_path):
    tasks, task_dir = fake_plan(tmp_path)
    unfinished = {"eval/dense-npo", "attacks/sparse-npo+quant-int8"}  # e.g. another --tasks run is on them
    removed = remove_unneeded_weights([t for t in tasks if t.kind != "push"], task_dir,
                                      lambda t: t.name not in unfinished, "none")
    assert removed["models"] == 0  # dense-npo: its eval is pending; sparse-npo: its attack; the attack: not done
    assert has_weights(task_dir, "models/dense-npo") and has_weights(task_dir, "models/sparse-npo")


def test_a_removed_model_is_recomputed_when_needed_again(tmp_path):
    tasks, task_dir = fake_plan(tmp_path)
    no_push = [t for t in tasks if t.kind != "push"]
    remove_unneeded_weights(no_push, task_dir, lambda t: True, "none")
    assert needed_again(no_push, set(), task_dir, "none") == set()  # a plain re-run: everything cached
    # an attack to run (e.g. added to the recipe) reads the unlearned model
    assert needed_again(no_push, {"eval/sparse-npo+quant-int8"}, task_dir, "none") == \
        {"attacks/sparse-npo+quant-int8", "models/sparse-npo"}
    assert needed_again(no_push, set(), task_dir, "sparse") == {"models/sparse-npo"}  # the policy keeps it now
    assert needed_again(tasks, set(), task_dir, "none") == {"models/sparse-npo"}  # a push reads it


@pytest.mark.slow
def test_a_run_removes_then_recomputes(tmp_path, tokenizer):
    from sau_trainer.modeling import build_llama
    from sau_trainer.pipeline import run_recipe, validate

    model_dir = tmp_path / "model"
    build_llama("tiny", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    def recipe(keep: str, **extra) -> dict:
        return validate({
            "name": "keep", "torch_threads": 1, "model": {"name_or_path": str(model_dir)},
            "train_target": {"enabled": False}, "train_retain": {"enabled": False, "model": str(model_dir)},
            "prune": {"method": ["magnitude"], "sparsity": [0.5]},
            "unlearn": {"model": ["dense", "sparse"], "objective": ["npo"], "sau": [True], "learning_rate": [1e-3],
                        "num_train_epochs": 1, "per_device_train_batch_size": 10, "logging_steps": 1000,
                        "args": {"disable_tqdm": True}},
            "evaluate": {"batch_size": 64, "max_new_tokens": 2, **extra},
            "report": {"plot": False, "keep_models": keep}})

    out = tmp_path / "out"
    dense, sparse = out / "stages/models/dense-npo-sau-lr0.001-s0", out / "stages/models/magnitude-50-npo-sau-lr0.001-s0"
    first = run_recipe(recipe("sparse"), out)
    assert first.removed["models"] == 1 and weights_removed(dense) and not weights_removed(sparse)
    assert (sparse / "model.safetensors").is_file() and not (dense / "model.safetensors").is_file()
    assert (dense / "sparsity_masks.safetensors").is_file() and (dense / "stage.json").is_file()
    report = json.loads((out / "report.json").read_text())
    second = run_recipe(recipe("none"), out)  # nothing to compute; the sparse model's weights go too
    assert second.ran == ["report"] and weights_removed(sparse)
    assert json.loads((out / "report.json").read_text())["runs"] == report["runs"]  # the report is unchanged
    third = run_recipe(recipe("none", robustness=["quant-int8"]), out)  # an attack added: its input is recomputed
    assert "models/magnitude-50-npo-sau-lr0.001-s0" in third.ran and "models/dense-npo-sau-lr0.001-s0" in third.ran
    assert weights_removed(sparse) and weights_removed(dense)  # and removed again once the attacks were evaluated
    fourth = run_recipe(recipe("all"), out)  # widened: every removed model comes back
    assert (sparse / "model.safetensors").is_file() and (dense / "model.safetensors").is_file()
    assert fourth.removed == {"models": 0, "bytes": 0}


def test_push_of_a_removed_model_says_how_to_get_it_back(tmp_path):
    from sau_trainer.hub import resolve_source

    run = "magnitude-50-npo-sau-lr0.001-s0"
    (tmp_path / "stages/models" / run).mkdir(parents=True)
    (tmp_path / "stages/models" / run / MARKER).write_text("{}")
    (tmp_path / "report.json").write_text(json.dumps({"runs": [{"name": run, "model": "sparse", "sau": True}]}))
    with pytest.raises(FileNotFoundError, match="report.keep_models=all") as err:
        resolve_source(tmp_path, None)
    assert f"push.run={run}" in str(err.value)
