"""`sau-trainer prune --model <Hub id>` when the id is not in the local cache: one line at once, never the Hub
library's retry loop (5 retries, 25-45 doubled warnings over up to 72 s on a machine without network).

The cache is an empty folder under tmp_path; "no network" is a Hub endpoint on a local port nobody listens on,
so the case is the same on every machine.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prune(tmp_path, *args, offline: bool, model: str = "no-such-owner/no-such-model") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "sau_trainer", "prune", "--model", model,
                           "--output-dir", str(tmp_path / "out"), *args], capture_output=True, text=True, env=env,
                          timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Retry" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sau-trainer prune: error: --model no-such-owner/no-such-model: ")
    return lines[0]


def test_an_uncached_hub_id_without_network_fails_at_once_in_one_line(tmp_path):
    line = one_line(prune(tmp_path, "--method", "magnitude", offline=False))
    assert "not in the Hugging Face cache" in line and "cannot be reached" in line


def test_an_uncached_hub_id_while_offline_fails_in_one_line(tmp_path):
    line = one_line(prune(tmp_path, "--method", "magnitude", offline=True))
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line


def test_wanda_names_the_missing_model_and_the_missing_calibration_together(tmp_path):
    line = one_line(prune(tmp_path, "--method", "wanda", offline=False))
    assert "cannot be reached" in line and "--method wanda needs --calibration" in line
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow  # saves and prunes a model in a subprocess (about 7 s)
def test_a_cached_hub_id_without_network_loads_from_the_cache_without_retries(tmp_path, tokenizer):
    from sau_trainer.modeling import build_llama

    snapshot = tmp_path / "hf/hub/models--me--tiny/snapshots" / ("a" * 40)  # the Hub cache's layout
    build_llama("tiny", tokenizer).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("a" * 40)
    proc = prune(tmp_path, "--method", "magnitude", "--sparsity", "0.5", "--no-progress", offline=False,
                 model="me/tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Retry" not in proc.stderr, proc.stderr[-3000:]  # was 5 retries per file the cache lacks: minutes
    assert "cannot be reached" in proc.stderr and "loading the cached copy" in proc.stderr
    assert (tmp_path / "out/model.safetensors").is_file()


def test_a_hub_library_warning_is_printed_once():
    code = ("import logging, huggingface_hub\n"
            "from sau_trainer.cli import main\n"
            "main(['run', 'no-such-recipe.yaml'])\n"
            "logging.getLogger('huggingface_hub.utils._http').warning('a retry warning')\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stderr.count("a retry warning") == 1, proc.stderr  # was twice: the Hub's handler and ours


@pytest.mark.slow  # a `sau-trainer run` subprocess (about 8 s)
def test_a_recipe_naming_an_uncached_hub_id_without_network_fails_before_any_stage(tmp_path):
    recipe = tmp_path / "hub.yaml"
    recipe.write_text("name: hub\nmodel: {name_or_path: no-such-owner/no-such-model}\n"
                      "data: {benchmark: synthetic, preset: tiny}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "sau_trainer", "run", str(recipe), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Retry" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sau-trainer run: error: model.name_or_path no-such-owner/")
    assert "cannot be reached" in lines[0]
    assert not (tmp_path / "out").exists()
