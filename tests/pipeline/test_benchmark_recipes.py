"""The recipe and the planner read the benchmark registry: names, subsets and presets are validated against
it, and a MUSE-style benchmark brings its own training splits, unlearning sets and metrics (end to end on
synthetic-muse)."""

import json
from pathlib import Path

import pytest
from sau_testing import OneProcess

from sau_trainer.pipeline import run_recipe, validate
from sau_trainer.pipeline.schema import RecipeError, load_recipe
from sau_trainer.pipeline.stages import plan

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes/demo.yaml"


@pytest.mark.parametrize("override, message", [
    ("data.benchmark=synthetic-musee", "data.benchmark: 'synthetic-musee' is not one of .*did you mean 'synthetic-muse'"),
    ("data.subset=news", "data: synthetic has no subset 'news' \\(it has no subsets\\)"),
    ("data.preset=huge", "data: synthetic has no preset 'huge'; choose one of \\['tiny', 'demo', 'tofu', 'study', "
                         "'study-large'\\]"),
])
def test_benchmark_options_are_validated_against_the_registry(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(DEMO, [override])
    with pytest.raises(RecipeError, match="data: muse has no subset 'poetry'; choose one of \\['news', 'books'\\]"):
        load_recipe(ROOT / "recipes/llama-2-7b/muse/news.yaml", ["data.subset=poetry"])
    with pytest.raises(RecipeError, match="synthetic-muse has no preset 'tofu'"):
        load_recipe(DEMO, ["data.benchmark=synthetic-muse", "data.preset=tofu"])


def test_plan_takes_splits_and_unlearning_sets_from_the_benchmark():
    muse = {t.name: t for t in plan(load_recipe(DEMO, ["data.benchmark=synthetic-muse"]))}
    assert muse["models/finetuned"].settings["splits"] == ["raw/forget", "raw/retain1", "raw/retain2"]
    assert muse["models/retain"].settings["splits"] == ["raw/retain1", "raw/retain2"]
    unlearn = muse["models/dense-npo-sau-lr0.0002-s0"].settings
    assert (unlearn["forget_split"], unlearn["retain_split"]) == ("raw/forget", "raw/retain1")
    assert muse["eval/finetuned"].settings["protocol"] == "muse"
    tofu = {t.name: t for t in plan(load_recipe(DEMO))}
    assert tofu["models/finetuned"].settings["splits"] == ["full", "real_authors_perturbed", "world_facts_perturbed"]
    assert tofu["models/retain"].settings["splits"] == ["retain90", "real_authors_perturbed", "world_facts_perturbed"]
    unlearn = tofu["models/dense-npo-sau-lr0.0002-s0"].settings
    assert (unlearn["forget_split"], unlearn["retain_split"]) == ("forget10", "retain90")
    assert tofu["eval/finetuned"].settings["protocol"] == "tofu"
    # the data fingerprints differ (each generator is hashed), so no stage is shared by mistake
    assert muse["models/finetuned"].settings["data"] != tofu["models/finetuned"].settings["data"]


@pytest.mark.slow
def test_synthetic_muse_end_to_end(tmp_path):
    train = {"num_train_epochs": 40, "learning_rate": 3e-3, "per_device_train_batch_size": 8,
             "lr_scheduler_type": "cosine", "warmup_steps": 10, "logging_steps": 1000, "args": {"disable_tqdm": True}}
    recipe = validate({
        "name": "muse-e2e", "torch_threads": 1,
        "model": {"shape": "tiny", "vocab_size": 512},
        "data": {"benchmark": "synthetic-muse"},
        "train_target": train, "train_retain": train,
        "prune": {"method": ["magnitude"], "sparsity": [0.5]},
        "unlearn": {"model": ["dense", "sparse"], "objective": ["graddiff"], "sau": [False, True],
                    "learning_rate": [1e-3], "num_train_epochs": 3, "per_device_train_batch_size": 4,
                    "lr_scheduler_type": "constant", "max_length": 128, "logging_steps": 1000,
                    "args": {"disable_tqdm": True}},
        "evaluate": {"batch_size": 32},
    })
    run_recipe(recipe, tmp_path, state=OneProcess())
    report = json.loads((tmp_path / "report.json").read_text())
    refs = {r["name"]: r["metrics"] for r in report["references"]}
    assert set(refs) == {"retain", "retain+magnitude-50", "finetuned", "finetuned+magnitude-50"}
    muse_keys = {"forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge", "privleak", "mia_loss",
                 "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "exact_memorization",
                 "extraction_strength"}
    for row in report["references"] + report["runs"]:
        assert muse_keys <= set(row["metrics"]), row["name"]
        assert "forget_quality" not in row["metrics"]
    assert refs["retain"]["privleak"] == 0.0
    assert refs["finetuned"]["privleak"] < -50  # the target's forget texts look like training data
    assert refs["finetuned"]["forget_verbmem_rouge"] > refs["retain"]["forget_verbmem_rouge"] + 0.1
    assert "privleak_pruned_retain" in refs["finetuned+magnitude-50"]
    assert len(report["runs"]) == 4
    md = (tmp_path / "report.md").read_text()
    assert "| forget VerbMem ROUGE | forget KnowMem ROUGE | retain KnowMem ROUGE | privleak |" in md
    assert "## Comparisons over the utility band" in md and "| forget KnowMem ROUGE |" in md
    assert "benchmark: synthetic-muse (preset tiny, seed 0)" in md
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    # the unlearning rows are 128-token chunks of the joined forget texts
    chunks = json.loads((tmp_path / "stages/models/dense-graddiff-plain-lr0.001-s0/stage.json").read_text())
    assert chunks["settings"]["forget_split"] == "raw/forget"
