"""A stage whose model diverges is recorded as diverged, never as finished: the other runs finish, the report says
so, the run exits 1, and a re-run neither retries it nor fails because of it."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from sau_testing import OneProcess

from sau_trainer import TrainingDiverged
from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import STAGES, run_recipe, validate
from sau_trainer.pipeline.diverged import nonfinite_weights
from sau_trainer.pipeline.runner import RunsDiverged, read_stage
from sau_trainer.pipeline.stages import Stage

RECIPE = {"model": {"shape": "tiny"}, "prune": {"enabled": False},
          "unlearn": {"model": ["dense"], "objective": ["ga"], "sau": [False], "learning_rate": [1e-3, 1e4]}}
BAD = "models/dense-ga-plain-lr10000-s0"
GOOD = "models/dense-ga-plain-lr0.001-s0"


@pytest.fixture
def calls(monkeypatch):
    """Stand-in stages; the unlearn run at lr 1e4 saves NaN weights (or raises, `calls.raise_it`)."""
    record = SimpleNamespace(names=[], raise_it=False)

    def make(kind):
        def fn(ctx, task, out):
            record.names.append(task.name)
            (out / "output.txt").write_text(task.hash)
            if kind == "evaluate":  # what the report reads of an evaluation
                (out / "results.json").write_text(json.dumps({
                    "summary": {"model_utility": 0.5, "forget_quality": 0.1, "forget_rouge": 0.2},
                    "per_example": {}, "model": {"measured_sparsity": 0.0}}))
            if kind in ("train", "unlearn"):
                w = torch.ones(4, 4)
                if task.settings.get("learning_rate") == 1e4:
                    if record.raise_it:
                        raise TrainingDiverged(3, float("nan"), 2.5, 1e4)
                    w[1, 2] = float("nan")
                save_file({"model.layers.0.mlp.up_proj.weight": w}, str(out / "model.safetensors"))
            return {"kind": kind}
        return fn

    for kind, stage in list(STAGES.items()):
        if kind != "report":
            monkeypatch.setitem(STAGES, kind, Stage(make(kind), stage.distributed, stage.cached, stage.help))
    return record


def test_nonfinite_weights_names_the_tensor(tmp_path):
    save_file({"a": torch.zeros(3), "b": torch.tensor([1.0, float("inf"), float("nan")]),
               "ids": torch.arange(3)}, str(tmp_path / "model.safetensors"))
    problem = nonfinite_weights(tmp_path)
    assert "2 of 6 values" in problem and "model.safetensors: b has 2 of 3 values not finite" in problem
    save_file({"a": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    assert nonfinite_weights(tmp_path) is None


@pytest.mark.parametrize("raise_it", [False, True], ids=["nan-weights", "TrainingDiverged"])
def test_a_diverged_run_is_recorded_reported_and_the_others_finish(tmp_path, calls, raise_it):
    calls.raise_it = raise_it
    with pytest.raises(RunsDiverged) as info:
        run_recipe(validate(RECIPE), tmp_path, state=OneProcess())
    summary = info.value.summary
    assert summary.diverged == [BAD] and summary.blocked == {"eval/dense-ga-plain-lr10000-s0": BAD}
    assert f"eval/{GOOD[7:]}" in calls.names and "eval/dense-ga-plain-lr10000-s0" not in calls.names
    doc = read_stage(tmp_path / "stages" / BAD)
    assert doc["status"] == "diverged" and ("not finite" in doc["reason"] or "diverged at optimizer step 3"
                                            in doc["reason"])
    assert not (tmp_path / "stages" / BAD / "model.safetensors").exists()  # NaN weights are not kept
    assert read_stage(tmp_path / "stages" / GOOD).get("status", "finished") == "finished"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["diverged"] == [{"name": "dense-ga-plain-lr10000-s0", "status": "diverged", "task": BAD,
                                   "reason": doc["reason"]}]
    assert "eval/dense-ga-plain-lr10000-s0" not in report.get("pending", [])
    md = (tmp_path / "report.md").read_text()
    assert "## Diverged runs" in md and f"`{BAD}`" in md

    calls.names.clear()  # a re-run: not retried, not failed
    again = run_recipe(validate(RECIPE), tmp_path, state=OneProcess())
    assert BAD not in calls.names and again.diverged_before == [BAD] and again.diverged == []
    assert read_stage(tmp_path / "stages" / BAD)["executions"] == 1
    assert json.loads((tmp_path / "report.json").read_text())["diverged"] == report["diverged"]


def test_the_command_exits_1_with_one_line_then_0(tmp_path, calls, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    argv = ["run", str(recipe), "--output-dir", str(out), ]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sau-trainer run: error:")]
    assert len(lines) == 1 and BAD in lines[0] and "diverged" in lines[0] and "Traceback" not in err
    assert cli_main(argv) == 0


def test_force_retries_a_diverged_run(tmp_path, calls):
    with pytest.raises(RunsDiverged):
        run_recipe(validate(RECIPE), tmp_path, state=OneProcess(), tasks=BAD)
    calls.names.clear()
    with pytest.raises(RunsDiverged):
        run_recipe(validate(RECIPE), tmp_path, state=OneProcess(), tasks=BAD, force=True)
    assert BAD in calls.names


# ----------------------------------------------------------------------------------------- end to end
def tiny_recipe(model_dir: Path) -> dict:
    return {
        "name": "diverge", "torch_threads": 1,
        "model": {"name_or_path": str(model_dir)},
        "data": {"benchmark": "synthetic", "preset": "tiny", "seed": 0, "forget_split": "forget10"},
        "train_target": {"enabled": False}, "train_retain": {"enabled": False},
        "prune": {"method": ["magnitude"], "sparsity": [0.5]},
        "unlearn": {"model": ["sparse"], "objective": ["ga"], "sau": [False], "learning_rate": [1e-4, 1e4],
                    "num_train_epochs": 1, "per_device_train_batch_size": 10, "lr_scheduler_type": "constant",
                    "logging_steps": 1000, "args": {"disable_tqdm": True}},
        "evaluate": {"batch_size": 64, "max_new_tokens": 8},
    }


@pytest.mark.slow
def test_a_recipe_with_a_diverging_learning_rate_end_to_end(memorized, tmp_path, capsys):
    """lr 1e4 with GA diverges (the trainer stops it, or its weights end NaN): recorded as diverged, the lr 1e-4 run
    is evaluated and reported, the command exits 1; the re-run exits 0 without retrying it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(tiny_recipe(memorized.model_dir)))
    out = tmp_path / "out"
    argv = ["run", str(recipe), "--output-dir", str(out)]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    bad = "models/magnitude-50-ga-plain-lr10000-s0"
    assert f"sau-trainer run: error: 1 task(s) diverged (a non-finite loss or weights): {bad}" in err
    doc = read_stage(out / "stages" / bad)
    assert doc["status"] == "diverged"
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["magnitude-50-ga-plain-lr0.0001-s0"]
    assert report["diverged"][0]["task"] == bad and "pending" not in report
    assert all(r["measured_sparsity"] > 0.4 for r in report["runs"])
    assert cli_main(argv) == 0
    assert read_stage(out / "stages" / bad)["executions"] == 1


def test_the_dry_run_lists_a_diverged_run_as_diverged(tmp_path, calls, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    assert cli_main(["run", str(recipe), "--output-dir", str(out)]) == 1
    capsys.readouterr()
    assert cli_main(["run", str(recipe), "--output-dir", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()  # the stage list, then the memory estimate
    assert any(line.split()[:1] == ["diverged"] and line.endswith(f" {BAD}") for line in listed)
    assert any(line.split()[:1] == ["cached"] and line.endswith(f" {GOOD}") for line in listed)
    assert not any(line.split()[:1] == ["to"] and line.endswith(f" {BAD}") for line in listed)
