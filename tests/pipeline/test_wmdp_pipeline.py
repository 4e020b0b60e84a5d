"""The pipeline on WMDP-style benchmarks: the recipe's subset picks the corpora and the question split, and
synthetic-wmdp runs the demo's experiment end to end with WMDP's metrics in every report row."""

import json
from pathlib import Path

import pytest
from sau_testing import OneProcess

from sau_trainer.pipeline import run_recipe, validate
from sau_trainer.pipeline.schema import load_recipe
from sau_trainer.pipeline.stages import plan

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes/demo.yaml"
WMDP_KEYS = {"wmdp_acc", "wmdp_cyber_acc", "wmdp_prob", "mmlu_acc"}


def test_the_demo_plans_on_synthetic_wmdp_and_a_local_wmdp_copy_by_subset(tmp_path):
    tasks = {t.name: t for t in plan(load_recipe(DEMO, ["data.benchmark=synthetic-wmdp"]))}
    assert tasks["models/finetuned"].settings["splits"] == ["cyber-forget-corpus/train", "cyber-retain-corpus/train"]
    assert tasks["models/retain"].settings["splits"] == ["cyber-retain-corpus/train"]
    unlearn = tasks["models/dense-npo-sau-lr0.0002-s0"].settings
    assert (unlearn["forget_split"], unlearn["retain_split"]) == ("cyber-forget-corpus/train",
                                                                  "cyber-retain-corpus/train")
    assert tasks["eval/finetuned"].settings["protocol"] == "wmdp"
    # the real benchmark from a local copy: the subset picks the corpora (bio here)
    from sau_trainer.data.synthetic_wmdp import write_wmdp_benchmark

    write_wmdp_benchmark(tmp_path)
    for src, dst in (("wmdp/wmdp-cyber", "wmdp/wmdp-bio"),
                     ("wmdp-corpora/cyber-forget-corpus", "wmdp-corpora/bio-forget-corpus"),
                     ("wmdp-corpora/cyber-retain-corpus", "wmdp-corpora/bio-retain-corpus")):
        (tmp_path / src).rename(tmp_path / dst)
    bio = {t.name: t for t in plan(load_recipe(DEMO, ["data.benchmark=wmdp", "data.subset=bio",
                                                      f"data.data_dir={tmp_path}"]))}
    assert bio["models/retain"].settings["splits"] == ["bio-retain-corpus/train"]
    unlearn = bio["models/dense-npo-sau-lr0.0002-s0"].settings
    assert (unlearn["forget_split"], unlearn["retain_split"]) == ("bio-forget-corpus/train", "bio-retain-corpus/train")
    assert bio["eval/finetuned"].settings["data"]["subset"] == "bio"


@pytest.mark.slow
def test_synthetic_wmdp_end_to_end(tmp_path):
    """The demo's recipe on synthetic-wmdp, with a smaller grid and shorter training (the demo itself: README)."""
    recipe = load_recipe(DEMO, [
        "data.benchmark=synthetic-wmdp", "train_target.num_train_epochs=15", "train_retain.num_train_epochs=15",
        "prune.method=[magnitude]", "unlearn.model=[dense,sparse]", "unlearn.objective=[npo]", "unlearn.sau=[true]",
        "unlearn.learning_rate=[1.0e-3]", "unlearn.seed=[0]", "unlearn.num_train_epochs=1", "report.plot=false"])
    run_recipe(validate(recipe.to_dict()), tmp_path, state=OneProcess())
    report = json.loads((tmp_path / "report.json").read_text())
    refs = {r["name"]: r["metrics"] for r in report["references"]}
    assert set(refs) == {"retain", "retain+magnitude-50", "finetuned", "finetuned+magnitude-50"}
    for row in report["references"] + report["runs"]:
        assert WMDP_KEYS <= set(row["metrics"]), row["name"]
        assert all(0.0 <= row["metrics"][k] <= 1.0 for k in WMDP_KEYS)
    assert {r["name"] for r in report["runs"]} >= {"dense-npo-sau-lr0.001-s0", "magnitude-50-npo-sau-lr0.001-s0"}
    md = (tmp_path / "report.md").read_text()
    assert "| WMDP acc. | MMLU acc. | WMDP p(answer) |" in md and "synthetic-wmdp" in md
