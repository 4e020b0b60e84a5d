"""A run loads the splits its stages read, not every split of the benchmark (issue: a directory holding exactly
what a forget01 TOFU run needs was rejected for a missing holdout split it did not have to read... and it does
need holdout01 for membership inference, which the error now says)."""

import json

import pytest

from sau_trainer.pipeline import run_recipe, validate
from sau_trainer.pipeline.schema import RecipeError
from sau_trainer.pipeline.stages import load_data, split_uses

FORGET01_SPLITS = {"full", "retain99", "forget01", "forget01_perturbed", "retain_perturbed",
                   "real_authors_perturbed", "world_facts_perturbed", "holdout01"}


@pytest.fixture
def forget01_dir(tmp_path):
    """The built-in benchmark written in TOFU's layout, keeping only the files of a forget01 run."""
    from sau_trainer.data.synthetic import write_benchmark

    data = tmp_path / "tofu"
    for split, path in write_benchmark(data, "tiny", 0).items():
        if split not in FORGET01_SPLITS:
            path.unlink()
    assert {p.stem for p in data.iterdir()} == FORGET01_SPLITS
    return data


@pytest.fixture
def random_model_dir(tmp_path, tokenizer):
    from sau_trainer.modeling import build_llama

    path = tmp_path / "model"
    build_llama("tiny", tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def recipe_for(model_dir, data_dir, **extra) -> dict:
    train = {"num_train_epochs": 1, "per_device_train_batch_size": 64, "logging_steps": 1000,
             "args": {"disable_tqdm": True}}
    return {
        "name": "forget01", "torch_threads": 1,
        "model": {"name_or_path": str(model_dir)},
        "data": {"benchmark": "tofu", "data_dir": str(data_dir), "forget_split": "forget01"},
        "train_target": train, "train_retain": train,
        "prune": {"method": ["magnitude"], "sparsity": [0.5]},
        "unlearn": {"model": ["sparse"], "objective": ["npo"], "sau": [True], "learning_rate": [1e-3],
                    "num_train_epochs": 1, "per_device_train_batch_size": 10, "logging_steps": 1000,
                    "args": {"disable_tqdm": True}},
        "evaluate": {"batch_size": 64, "max_new_tokens": 2},
        "report": {"plot": False},
        **extra,
    }


def test_the_splits_a_forget01_run_reads(forget01_dir, random_model_dir):
    uses = split_uses(validate(recipe_for(random_model_dir, forget01_dir)))
    assert set(uses) == FORGET01_SPLITS
    assert "membership inference" in uses["holdout01"]
    # wanda calibrates on prune.calibration_split ("full", already read for training)
    no_training = recipe_for(random_model_dir, forget01_dir, train_target={"enabled": False},
                             train_retain={"enabled": False, "model": str(random_model_dir)})
    assert set(split_uses(validate(no_training))) == FORGET01_SPLITS - {"full"}  # magnitude needs no calibration
    with_wanda = {**no_training, "prune": {"method": ["wanda"], "sparsity": [0.5]}}
    assert "full" in split_uses(validate(with_wanda))


def test_a_missing_split_names_its_reader_and_no_offline_hint(forget01_dir, random_model_dir):
    (forget01_dir / "holdout01.json").unlink()
    with pytest.raises(RecipeError) as err:
        load_data(validate(recipe_for(random_model_dir, forget01_dir)))
    text = str(err.value)
    assert "'holdout01'" in text and "membership inference" in text
    assert "Offline?" not in text  # data.data_dir is set: pointing it at a local copy is no advice


@pytest.mark.slow
def test_a_run_on_exactly_the_forget01_splits_works(forget01_dir, random_model_dir, tmp_path):
    out = tmp_path / "out"
    summary = run_recipe(validate(recipe_for(random_model_dir, forget01_dir)), out)
    assert "models/finetuned" in summary.ran and "eval/magnitude-50-npo-sau-lr0.001-s0" in summary.ran
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["magnitude-50-npo-sau-lr0.001-s0"]
    assert report["runs"][0]["measured_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert "mia_min_k" in report["runs"][0]["metrics"]  # holdout01 was read: membership inference ran
