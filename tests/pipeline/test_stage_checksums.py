"""Every file a stage writes is checksummed in its stage.json; a cached stage whose files differ is recomputed."""

import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from sau_testing import OneProcess

from sau_trainer.masks import SparsityMasks
from sau_trainer.pipeline import STAGES, run_recipe, validate
from sau_trainer.pipeline import checksums as cs
from sau_trainer.pipeline.runner import PIPELINE_VERSION, STAGE_FILE, read_stage
from sau_trainer.pipeline.stages import Stage

RECIPE = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]},
          "unlearn": {"objective": ["npo"], "sau": [True], "learning_rate": [1e-3]}}
PRUNED = "models/finetuned+magnitude-50"
NAME = "model.layers.0.mlp.up_proj.weight"


def pruned_tensors():
    w = torch.arange(1.0, 65.0).reshape(8, 8)
    keep = (torch.arange(64).reshape(8, 8) % 2) == 0
    return w * keep, keep


@pytest.fixture
def calls(monkeypatch):
    """Stand-in stages; the prune stage saves weights with zeros and the matching masks."""
    record = SimpleNamespace(names=[])

    def make(kind):
        def fn(ctx, task, out):
            record.names.append(task.name)
            (out / "output.txt").write_text(task.hash)
            if kind == "prune":
                w, keep = pruned_tensors()
                save_file({NAME: w}, str(out / "model.safetensors"))
                SparsityMasks.from_tensors({NAME: keep}).save(out)
            return {"kind": kind}
        return fn

    for kind, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, Stage(make(kind), stage.distributed, stage.cached, stage.help))
    return record


def run(out, **kw):
    return run_recipe(validate(RECIPE), out, state=OneProcess(), **kw)


def flip(path, n=1000, at=200):
    data = bytearray(path.read_bytes())
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_stage_json_lists_every_file_with_its_sha256(tmp_path, calls):
    run(tmp_path)
    folder = tmp_path / "stages" / PRUNED
    doc = read_stage(folder)
    assert set(doc["files"]) == {"output.txt", "model.safetensors", "sparsity_masks.safetensors"}
    for rel, meta in doc["files"].items():
        assert meta == {"size": (folder / rel).stat().st_size, "sha256": cs.sha256_file(folder / rel)}
    assert doc["version"] == PIPELINE_VERSION == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_file_makes_its_stage_recompute_with_a_line_naming_it(tmp_path, calls, caplog, damage):
    run(tmp_path)
    path = tmp_path / "stages" / PRUNED / "sparsity_masks.safetensors"
    if damage == "flip":
        flip(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    else:
        path.unlink()
    calls.names.clear()
    with caplog.at_level(logging.WARNING, logger="sau_trainer.pipeline.runner"):
        run(tmp_path)
    assert PRUNED in calls.names and "models/finetuned" not in calls.names
    lines = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "recomputing" in lines[0]
    assert cs.check_files(path.parent, read_stage(path.parent)["files"]) is None  # redone, and it matches again


def test_files_removed_on_purpose_and_hard_links_are_not_corruption(tmp_path, calls):
    run(tmp_path)
    folder = tmp_path / "stages" / PRUNED
    weights = folder / "model.safetensors"
    linked = tmp_path / "elsewhere.safetensors"
    os.link(weights, linked)  # as the attack stages link their source's files
    (folder / cs.MARKER).write_text(json.dumps({"files": ["output.txt"]}))  # report.keep_models removed it
    (folder / "output.txt").unlink()
    calls.names.clear()
    run(tmp_path)
    assert PRUNED not in calls.names


def test_an_old_stage_json_is_verified_once_and_gets_its_checksums(tmp_path, calls, caplog):
    run(tmp_path)
    folder = tmp_path / "stages" / PRUNED
    doc = read_stage(folder)
    del doc["files"]
    (folder / STAGE_FILE).write_text(json.dumps(doc))
    calls.names.clear()
    with caplog.at_level(logging.INFO, logger="sau_trainer.pipeline.checksums"):
        run(tmp_path)
    assert PRUNED not in calls.names
    assert read_stage(folder)["files"]["model.safetensors"]["sha256"] == cs.sha256_file(folder / "model.safetensors")
    assert any("written before checksums existed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", ["truncate", "masks"])
def test_an_old_stage_json_whose_files_fail_verification_is_recomputed(tmp_path, calls, caplog, damage):
    run(tmp_path)
    folder = tmp_path / "stages" / PRUNED
    doc = read_stage(folder)
    del doc["files"]
    (folder / STAGE_FILE).write_text(json.dumps(doc))
    if damage == "truncate":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:-10])
    else:  # a mask file that disagrees with the weights' zeros (still a valid file)
        path = folder / "sparsity_masks.safetensors"
        _, keep = pruned_tensors()
        SparsityMasks.from_tensors({NAME: ~keep}).save(path)
    calls.names.clear()
    with caplog.at_level(logging.WARNING, logger="sau_trainer.pipeline.runner"):
        run(tmp_path)
    assert PRUNED in calls.names
    assert any(str(path) in r.getMessage() for r in caplog.records)


def test_masks_that_disagree_with_the_weights_zeros_are_an_error_beyond_a_handful():
    w = torch.randn(64, 64)
    keep = torch.rand(64, 64) > 0.5
    w = w * keep
    masks = SparsityMasks.from_tensors({NAME: keep})
    masks.check_weights({NAME: w}, "m.safetensors")  # agree
    few = keep.clone().flatten()
    few[:3] = ~few[:3]
    SparsityMasks.from_tensors({NAME: few.reshape(64, 64)}).check_weights({NAME: w})  # a handful: allowed
    many = keep.clone().flatten()
    many[:500] = ~many[:500]
    with pytest.raises(ValueError, match="m.safetensors: the sparsity masks disagree with the weights' zeros"):
        SparsityMasks.from_tensors({NAME: many.reshape(64, 64)}).check_weights({NAME: w}, "m.safetensors")


def test_a_truncated_mask_file_error_names_the_file(tmp_path):
    path = SparsityMasks.from_tensors({NAME: torch.ones(8, 8, dtype=torch.bool)}).save(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match=f"{path}: cannot read the sparsity mask file"):
        SparsityMasks.load(tmp_path)


def test_a_dry_run_writes_no_checksums_into_an_old_stage_json(tmp_path, calls, capsys):
    from sau_trainer.cli import main as cli_main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    assert cli_main(["run", str(recipe), "--output-dir", str(out)]) == 0
    folder = out / "stages" / PRUNED
    doc = read_stage(folder)
    del doc["files"]
    (folder / STAGE_FILE).write_text(json.dumps(doc))
    before = (folder / STAGE_FILE).read_bytes()
    capsys.readouterr()
    assert cli_main(["run", str(recipe), "--output-dir", str(out), "--dry-run"]) == 0
    assert any(line.startswith("cached") and line.endswith(PRUNED) for line in capsys.readouterr().out.splitlines())
    assert (folder / STAGE_FILE).read_bytes() == before  # a dry run verifies, records nothing
