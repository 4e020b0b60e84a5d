"""`accelerate launch -m sau_trainer run` with two CPU processes: training and unlearning run data parallel,
the rest once, and the outputs are what a single process would write."""

import json

import pytest
from launch import accelerate_launch

RECIPE = """
name: ddp
torch_threads: 1
model: {shape: tiny, vocab_size: 384}
data: {benchmark: synthetic, preset: tiny, seed: 0, forget_split: forget10}
train_target: {num_train_epochs: 2, learning_rate: 4.0e-3, per_device_train_batch_size: 8, effective_batch_size: 16,
               logging_steps: 1000, args: {disable_tqdm: true}}
train_retain: {num_train_epochs: 1, learning_rate: 4.0e-3, per_device_train_batch_size: 8, logging_steps: 1000,
               args: {disable_tqdm: true}}
prune: {method: [magnitude], sparsity: [0.5]}
unlearn: {model: [sparse], objective: [npo], sau: [true], learning_rate: [1.0e-3], num_train_epochs: 1,
          per_device_train_batch_size: 5, logging_steps: 1000, args: {disable_tqdm: true}}
evaluate: {batch_size: 64, max_new_tokens: 8}
report: {plot: false}
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_accelerate_launch_two_cpu_processes(tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    cmd = ("cpu_two_processes.yaml", "-m", "sau_trainer", "run", recipe, "--output", out)
    accelerate_launch(*cmd, cwd=tmp_path, timeout=900)
    stage = json.loads((out / "stages/models/finetuned/stage.json").read_text())
    assert stage["info"]["num_processes"] == 2
    unlearn = json.loads((out / "stages/models/magnitude-50-npo-sau-lr0.001-s0/stage.json").read_text())
    assert unlearn["info"]["num_processes"] == 2 and unlearn["info"]["measured_sparsity"] == 0.5
    assert unlearn["info"]["global_step"] == 2  # 20 forget rows / (5 x 2 processes)
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["magnitude-50-npo-sau-lr0.001-s0"]
    assert report["runs"][0]["measured_sparsity"] == 0.5
    # a second launch finds everything done
    proc = accelerate_launch(*cmd, cwd=tmp_path, timeout=600)
    assert "1 to run" in proc.stderr + proc.stdout  # the report, which is always rewritten
