"""SAU under FSDP2 (and DeepSpeed ZeRO-3) on 2 CPU processes, launched as a user launches it: `accelerate launch --config_file
recipes/accelerate/fsdp2_cpu.yaml tests/sharded_worker.py` (an ordinary script with no FSDP arguments).

Against the same script on one process (same model, data, seed, saliency_batch_size): G and W equal within the
tolerances the README states (G: at least 99.9% of entries equal, W: relative 1e-4; here they come out identical),
every pruned entry exactly zero in the saved full model, the weights trained; a sharded checkpoint resumes without
a new saliency pass and ends where the uninterrupted run ends. The model has uneven shards (an MLP width of 75 over
2 processes) and the runs accumulate gradients over 2 micro-batches.
"""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from launch import accelerate_launch, run, worker_env
from safetensors.torch import load_file

from sau_trainer.masks import SparsityMasks
from sau_trainer.sau import SAUState

HERE = Path(__file__).parent
ROOT = HERE.parent
WORKER = HERE / "sharded_worker.py"
G_EQUAL_AT_LEAST = 0.999
W_REL_TOL = 1e-4


def launch(config: str, out: Path, *opts: str, ok=True, num_processes=None, env=None):
    """tests/sharded_worker.py under `accelerate launch` (config: a file of recipes/accelerate/ or a path)."""
    return accelerate_launch(config, WORKER, out, *opts, num_processes=num_processes, env=env, ok=ok)


def single(out: Path, *opts: str):
    """tests/sharded_worker.py on one process."""
    return run([sys.executable, str(WORKER), str(out), *opts])


def compare_states(one: Path, sharded: Path) -> tuple[float, float]:
    """(fraction of equal G entries, max relative W difference) between two saved SAU states."""
    a, b = SAUState.load(one), SAUState.load(sharded)
    assert list(a.selected) == list(b.selected) and a.shapes == b.shapes
    equal = total = 0
    w_rel = 0.0
    for n in a.selected:
        ga, gb = a.mask(n), b.mask(n)
        assert ga.shape == gb.shape == tuple(a.shapes[n])
        equal, total = equal + int((ga == gb).sum()), total + ga.numel()
        assert (n in a.weights) == (n in b.weights)
        if n in a.weights:
            wa, wb = a.weights[n].double(), b.weights[n].double()
            assert wa.shape == wb.shape, n
            w_rel = max(w_rel, float(((wa - wb).abs() / wa.abs()).max()))
    return equal / total, w_rel


def pruned_nonzero(directory: Path) -> int:
    weights = load_file(directory / "model.safetensors")
    masks = SparsityMasks.load(directory)
    assert masks.sparsity() > 0.4
    return sum(int(weights[n][~masks.get(n)].count_nonzero()) for n in masks.names)


OPTS = ("odd=1", "ga=2", "steps=2", "save_steps=1")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The worker on one plain process (the reference of every sharded run here)."""
    out = tmp_path_factory.mktemp("one") / "run"
    single(out, *OPTS)
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_matches_one_process_uneven_shards_accumulation_and_resume(tmp_path, one_process):
    opts = OPTS
    (tmp_path / "one").symlink_to(one_process, target_is_directory=True)
    launch("fsdp2_cpu.yaml", tmp_path / "fsdp", *opts)
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    rep = json.loads((tmp_path / "fsdp" / "report.json").read_text())
    assert rep["world"] == 2 and rep["distributed_type"] == "DistributedType.FSDP" and rep["sharded"]
    assert one["saliency_passes"] == rep["saliency_passes"] == 1
    # the full-shape G of every matrix, on one process and sharded (gate/up have 75 rows: 38 + 37)
    assert rep["mask_shapes"] == one["mask_shapes"]
    assert rep["mask_shapes"]["model.layers.0.mlp.gate_proj.weight"][0] == 75
    g_equal, w_rel = compare_states(tmp_path / "one" / "final", tmp_path / "fsdp" / "final")
    assert g_equal >= G_EQUAL_AT_LEAST and w_rel <= W_REL_TOL, (g_equal, w_rel)
    final = tmp_path / "fsdp" / "final"
    assert {"model.safetensors", "sparsity_masks.safetensors", "sau_state.safetensors"} <= set(os.listdir(final))
    assert sorted(load_file(final / "model.safetensors")) == sorted(load_file(tmp_path / "one" / "final" /
                                                                              "model.safetensors"))
    assert pruned_nonzero(final) == 0 and pruned_nonzero(tmp_path / "fsdp" / "checkpoint-1") == 0
    assert rep["surviving_changed"] > 0.5  # trained (selected entries move; G is 30% of the survivors)
    assert rep["losses"][-1] < rep["losses"][0]  # graddiff: forget NLL up, retain NLL kept
    # resume from the sharded checkpoint: M, G and W restored, no saliency pass, the same end point
    launch("fsdp2_cpu.yaml", tmp_path / "resumed", "odd=1", "ga=2", "steps=2",
           f"resume={tmp_path / 'fsdp' / 'checkpoint-1'}")
    resumed = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert resumed["saliency_passes"] == 0
    assert compare_states(final, tmp_path / "resumed" / "final") == (1.0, 0.0)
    a, b = load_file(final / "model.safetensors"), load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_matches_one_process_uneven_shards_accumulation_and_resume(tmp_path, one_process):
    pytest.importorskip("deepspeed")
    env = worker_env(DS_ACCELERATOR="cpu")
    opts = OPTS
    (tmp_path / "one").symlink_to(one_process, target_is_directory=True)
    launch("zero3_cpu.yaml", tmp_path / "zero3", *opts, env=env)
    rep = json.loads((tmp_path / "zero3" / "report.json").read_text())
    assert rep["world"] == 2 and rep["distributed_type"] == "DistributedType.DEEPSPEED"
    assert rep["saliency_passes"] == 1
    assert rep["mask_shapes"] == json.loads((tmp_path / "one" / "report.json").read_text())["mask_shapes"]
    g_equal, w_rel = compare_states(tmp_path / "one" / "final", tmp_path / "zero3" / "final")
    assert g_equal >= G_EQUAL_AT_LEAST and w_rel <= W_REL_TOL, (g_equal, w_rel)
    final = tmp_path / "zero3" / "final"
    assert pruned_nonzero(final) == 0
    assert rep["surviving_changed"] > 0.5 and rep["losses"][-1] < rep["losses"][0]
    launch("zero3_cpu.yaml", tmp_path / "resumed", "odd=1", "ga=2", "steps=2",
           f"resume={tmp_path / 'zero3' / 'checkpoint-1'}", env=env)
    resumed = json.loads((tmp_path / "resumed" / "report.json").read_text())
    assert resumed["saliency_passes"] == 0
    assert compare_states(final, tmp_path / "resumed" / "final") == (1.0, 0.0)
    a, b = load_file(final / "model.safetensors"), load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert pruned_nonzero(tmp_path / "resumed" / "final") == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_zero2_matches_one_process(tmp_path, one_process):
    # zero3_cpu.yaml with zero_stage 2: gradients and optimizer state partitioned, parameters whole
    pytest.importorskip("deepspeed")
    config = tmp_path / "zero2_cpu.yaml"
    config.write_text((ROOT / "recipes" / "accelerate" / "zero3_cpu.yaml").read_text()
                      .replace("zero_stage: 3", "zero_stage: 2"))
    launch(str(config), tmp_path / "zero2", *OPTS[:3], env=worker_env(DS_ACCELERATOR="cpu"))
    rep = json.loads((tmp_path / "zero2" / "report.json").read_text())
    assert rep["world"] == 2 and rep["distributed_type"] == "DistributedType.DEEPSPEED"
    g_equal, w_rel = compare_states(one_process / "final", tmp_path / "zero2" / "final")
    assert g_equal >= G_EQUAL_AT_LEAST and w_rel <= W_REL_TOL, (g_equal, w_rel)
    assert pruned_nonzero(tmp_path / "zero2" / "final") == 0
    assert rep["surviving_changed"] > 0.5 and rep["losses"][-1] < rep["losses"][0]


@pytest.mark.distributed
@pytest.mark.parametrize("version, message", [
    ("2", "ValueError: FSDP was asked for"),
    pytest.param("1", "ValueError: FSDP version 1 was asked for", marks=pytest.mark.slow),
])
def test_fsdp_request_that_runs_unsharded_stops_before_training(tmp_path, version, message):
    # FSDP asked for the way `accelerate launch` asks (ACCELERATE_USE_FSDP), but one plain process: the Trainer
    # would run unsharded (distributed type NO); FSDP1 is refused before accelerate builds its plugin. Both stop in
    # SAUTrainer(...), before any training, with one line
    proc = run([sys.executable, str(WORKER), str(tmp_path / "one"), "steps=1"],
                env=worker_env(ACCELERATE_USE_FSDP="true", FSDP_VERSION=version), ok=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    if version == "2":
        assert "got NO" in last
    assert not (tmp_path / "one" / "report.json").exists()
