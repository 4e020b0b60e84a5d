"""The study's recipes (recipes/study, issue 17) cut down and run end to end on the shared trained tiny models:
base (plain and SAU) and the moving-mask variant, then benchmarks/study.py's verdict table from their reports."""

import importlib.util
import json
from pathlib import Path

import pytest
from sau_testing import OneProcess

from sau_trainer.masks import SparsityMasks
from sau_trainer.pipeline import load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2]
RETAIN_SPLITS = ("retain90", "real_authors_perturbed", "world_facts_perturbed")


def _study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "benchmarks" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cut_down(memorized, retain) -> list[str]:
    """Start from the fixtures' models (no training; they learnt the tiny preset), prune 70%, 2 learning rates,
    1 seed, short generations, 3 evaluations per run."""
    return [f"model.name_or_path={memorized.model_dir}", "model.shape=null", "data.preset=tiny", "train_target.enabled=false",
            "train_retain.enabled=false", f"train_retain.model={retain.model_dir}", "prune.num_samples=16",
            "prune.seq_len=32", "unlearn.learning_rate=[3.0e-3,3.0e-2]", "unlearn.seed=[0]",
            "unlearn.num_train_epochs=2", "unlearn.eval_steps=0.5", "evaluate.max_new_tokens=8",
            "report.plot=false"]


@pytest.mark.slow
def test_study_recipes_cut_down_end_to_end(memorized, trained_model, tmp_path):
    study = _study()
    retain = trained_model(RETAIN_SPLITS)
    common = cut_down(memorized, retain)
    base = load_recipe(ROOT / "recipes" / "study" / "base.yaml", common + ["unlearn.model=[sparse]", "unlearn.exclude=null"])
    run_recipe(base, tmp_path / "base", state=OneProcess())
    _, overrides, _ = study.PARTS["moving"]
    variant = load_recipe(ROOT / "recipes" / "study" / "variant.yaml", common + overrides)
    summary = run_recipe(variant, tmp_path / "moving", state=OneProcess())
    assert summary.failed is None

    # the moving mask's runs: same sparsity per matrix as the pruned start, a support that moved, said so in files
    start = SparsityMasks.load(tmp_path / "base" / "stages" / "models" / "finetuned+magnitude-70")
    for mode in ("plain", "sau"):
        for lr in ("0.003", "0.03"):
            run_dir = tmp_path / "moving" / "stages" / "models" / f"magnitude-70-npo-{mode}-lr{lr}-s0"
            moved = json.loads((run_dir / "sparsity.json").read_text())["mask_moved"]
            assert moved["steps"] > 0 and moved["moved"] == (moved["replaced_entries"] > 0)
            if lr == "0.03":  # large steps: pruned entries outgrow the smallest survivors
                assert moved["moved"]
            final = SparsityMasks.load(run_dir)
            assert {n: final.num_surviving(n) for n in final.names} == {n: start.num_surviving(n)
                                                                        for n in start.names}
    report = json.loads((tmp_path / "moving" / "report.json").read_text())
    assert {r["sau"] for r in report["runs"]} == {False, True}
    assert all(abs(r["measured_sparsity"] - 0.7) < 0.01 for r in report["runs"])

    assert all(len(r["trajectory"]) == 3 for r in report["runs"])  # step 0, half way, the end

    table = study.render(tmp_path)
    for part in ("base", "moving"):  # each part's own comparisons, read from its report.json
        for metric in ("forget_quality_log10", "forget_rouge"):
            assert f"| {part} | npo, magnitude 70% | sau vs plain | {metric} |" in table
    assert "inconclusive" in table and "better" not in table and "worse" not in table  # one seed: no verdict
    assert "Each comparison of `base` re-read from the same runs" in table and "seeds 2-4" in table
