"""`accelerate launch -m sau_trainer run` with two CPU processes: training and unlearning run data parallel,
the rest once, and the outputs are what a single process would write."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not installed")
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--config_file", str(ROOT / "recipes/accelerate/cpu_two_processes.yaml"),
           "-m", "sau_trainer", "run", str(recipe), "--output", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    stage = json.loads((out / "stages/models/finetuned/stage.json").read_text())
    assert stage["info"]["num_processes"] == 2
    unlearn = json.loads((out / "stages/models/magnitude-50-npo-sau-lr0.001-s0/stage.json").read_text())
    assert unlearn["info"]["num_processes"] == 2 and unlearn["info"]["measured_sparsity"] == 0.5
    assert unlearn["info"]["global_step"] == 2  # 20 forget rows / (5 x 2 processes)
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["magnitude-50-npo-sau-lr0.001-s0"]
    assert report["runs"][0]["measured_sparsity"] == 0.5
    # a second launch finds everything done
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 to run" in proc.stderr + proc.stdout  # the report, which is always rewritten
