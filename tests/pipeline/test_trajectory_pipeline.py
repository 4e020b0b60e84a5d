"""A small recipe end to end with ``unlearn.eval_steps`` on the shared trained tiny models (slow): every run keeps a
trajectory of >= 5 evaluations (step 0 included), report.json carries it, and the SAU-vs-plain comparisons are
read over the pruned model's band from the trajectory points, with every seed paired."""

import json

import pytest
from sau_testing import OneProcess

from sau_trainer.pipeline import run_recipe, validate

RETAIN_SPLITS = ("retain90", "real_authors_perturbed", "world_facts_perturbed")


@pytest.mark.slow
def test_runs_evaluated_during_unlearning_give_trajectories_and_band_comparisons(memorized, trained_model, tmp_path):
    retain = trained_model(RETAIN_SPLITS)
    recipe = validate({
        "name": "trajectories", "torch_threads": 1,
        "model": {"name_or_path": str(memorized.model_dir)},
        "data": {"benchmark": "synthetic", "preset": "tiny", "seed": 0, "forget_split": "forget10"},
        "train_target": {"enabled": False}, "train_retain": {"enabled": False, "model": str(retain.model_dir)},
        "prune": {"method": ["magnitude"], "sparsity": [0.5], "num_samples": 16, "seq_len": 32},
        # 20 forget rows / batch 5 = 4 steps per epoch, 2 epochs: evaluations at steps 0, 2, 4, 6, 8
        "unlearn": {"model": ["sparse"], "objective": ["npo"], "sau": [False, True], "learning_rate": [3e-3, 3e-2],
                    "seed": [0, 1, 2], "num_train_epochs": 2, "per_device_train_batch_size": 5,
                    "lr_scheduler_type": "constant", "logging_steps": 1000, "args": {"disable_tqdm": True},
                    "eval_steps": 2, "eval_rows": 4, "eval_max_new_tokens": 8},
        "evaluate": {"batch_size": 64, "max_new_tokens": 8},
        "report": {"plot": False},
    })
    out = tmp_path / "out"
    summary = run_recipe(recipe, out, state=OneProcess())
    assert summary.failed is None
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 12
    starts = set()
    for r in report["runs"]:
        steps = [e["step"] for e in r["trajectory"]]
        assert steps == [0, 2, 4, 6, 8], r["name"]
        assert r["trajectory"][0]["model_utility"] > 0  # the start; a large rate may break utility to 0 later
        assert all(e["model_utility"] >= 0 and 0 <= e["forget_quality"] <= 1 for e in r["trajectory"])
        starts.add(round(r["trajectory"][0]["model_utility"], 9))
        stored = json.loads((out / "stages" / "models" / r["name"] / "trajectory.json").read_text())
        assert stored == r["trajectory"]
    assert len(starts) == 1  # every run starts from the same pruned model, evaluated the same way
    for r in report["references"]:
        assert "trajectory" not in r
    (start,) = starts
    comparisons = report["comparisons"]
    assert [(c["a"], c["metric"]) for c in comparisons] == [("sau", "forget_quality_log10"), ("sau", "forget_rouge")]
    for c in comparisons:
        assert c["points"] == "trajectories" and c["seeds"] == 3 and c["paired_seeds"] == 3
        assert c["band"]["start_utility"] == pytest.approx(start)  # the step-0 evaluation, not the reference row
        assert c["band"]["fractions"] == [0.85, 0.95] and isinstance(c["fragile"], bool)
        assert c["verdict"] in ("better", "worse", "inconclusive") and c["ci95"] is not None
        assert {e["kind"] for e in c["sensitivity"]} == {"floor", "without_lr"}
        assert c["resolution"]["n"] == 20
    md = (out / "report.md").read_text()
    assert "The frontiers use the evaluations during unlearning (unlearn.eval_steps: step 0, every 2 optimizer " \
           "steps" in md
    assert "the first 4 rows of each split except the forget set's" in md
    info = json.loads((out / "stages" / "models" / report["runs"][0]["name"] / "stage.json").read_text())
    assert info["info"]["eval_seconds"] > 0
