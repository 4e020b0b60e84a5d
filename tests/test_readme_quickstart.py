"""The README's Python quick start runs as pasted: from an empty directory, offline, on a CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_quick_start_has_a_runnable_block_and_a_real_model_block():
    first, second = quick_start_blocks()[:2]
    assert "from_pretrained" not in first and "bf16" not in first  # nothing downloaded, nothing GPU-only
    assert "prune_model" in first and "SAUTrainer" in first and "measured_sparsity" in first
    assert "from_pretrained" in second
    assert "torch.set_num_threads(1)" in first  # without it a 2-layer model burned several times the CPU time


@pytest.mark.slow
def test_the_quick_start_runs_as_pasted(tmp_path):
    code = quick_start_blocks()[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("OMP_NUM_THREADS", None)  # as a user runs it: the block itself limits the threads
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    pruned = re.search(r"pruned: sparsity ([\d.]+), forget NLL ([\d.]+)", proc.stdout)
    unlearned = re.search(r"unlearned: sparsity ([\d.]+) \(kept\), forget NLL ([\d.]+)", proc.stdout)
    assert pruned and unlearned, proc.stdout[-2000:]
    assert float(pruned[1]) == float(unlearned[1]) == 0.5  # exact zeros kept through unlearning
    assert float(unlearned[2]) > float(pruned[2])  # the forget answers became less likely
    assert (tmp_path / "out/npo-sau/sparsity_masks.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["npo-sau"]  # no empty out/finetuned/
    assert "{'" not in proc.stdout  # the Trainer's logs are not printed as dicts
    assert "sau/selected_fraction/" not in proc.stdout  # the per-matrix statistics stay out of the console
