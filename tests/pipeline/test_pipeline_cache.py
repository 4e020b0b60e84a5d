"""The cached runner with stand-in stages (no models): skip what is done, redo what changed, survive a crash."""

import json
import os
from types import SimpleNamespace

import pytest
from sau_testing import OneProcess

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import STAGES, StageFailed, run_recipe, validate
from sau_trainer.pipeline.runner import STAGE_FILE, read_stage
from sau_trainer.pipeline.stages import Stage

RECIPE = {"model": {"shape": "tiny"}, "prune": {"method": ["magnitude", "wanda"]},
          "unlearn": {"objective": ["npo"], "sau": [False, True], "learning_rate": [1e-3], "then_prune": True}}


@pytest.fixture
def calls(monkeypatch):
    """Replace every stage by one that writes a file and records its call; `calls.fail` makes one raise."""
    record = SimpleNamespace(names=[], fail=None)

    def make(kind):
        def fn(ctx, task, out):
            if record.fail and record.fail in task.name:
                raise RuntimeError(f"boom in {task.name}")
            record.names.append(task.name)
            (out / "output.txt").write_text(task.hash)
            return {"kind": kind}
        return fn

    for kind, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, Stage(make(kind), stage.distributed, stage.cached, stage.help))
    return record


def run(data, out, **kw):
    return run_recipe(validate(data), out, state=OneProcess(), **kw)


def mtimes(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in (root / "stages").rglob("*") if p.is_file()}


def test_a_rerun_skips_every_finished_stage(tmp_path, calls):
    first = run(RECIPE, tmp_path)
    assert first.skipped == [] and len(first.ran) == len(calls.names)
    kinds = {read_stage(tmp_path / "stages" / n)["kind"] for n in calls.names if n != "report"}
    assert kinds == {"tokenizer", "train", "prune", "unlearn", "evaluate"}
    doc = read_stage(tmp_path / "stages" / "models" / "finetuned")
    assert doc["hash"] and doc["version"] == 1 and doc["settings"]["train"]["learning_rate"] == 1e-5
    before = mtimes(tmp_path)
    calls.names.clear()
    second = run(RECIPE, tmp_path)
    assert calls.names == ["report"]  # the report is always rewritten; everything else is cached
    assert mtimes(tmp_path) == before
    assert len(second.skipped) == len(first.ran) - 1
    calls.names.clear()
    run(RECIPE, tmp_path, force=True)
    assert len(calls.names) == len(first.ran)


def test_a_changed_setting_recomputes_what_depends_on_it_and_nothing_else(tmp_path, calls):
    run(RECIPE, tmp_path)
    calls.names.clear()
    changed = {**RECIPE, "unlearn": {**RECIPE["unlearn"], "sau_topk": 0.5}}
    run(changed, tmp_path)
    assert calls.names and all(n.startswith(("models/dense-", "models/magnitude-", "models/wanda-", "eval/dense-",
                                             "eval/magnitude-", "eval/wanda-", "report")) for n in calls.names)
    assert "models/finetuned" not in calls.names and "eval/finetuned" not in calls.names
    # an upstream change reaches everything downstream, under the same directory names
    calls.names.clear()
    run({**changed, "train_target": {"learning_rate": 2e-3}}, tmp_path)
    assert "models/finetuned" in calls.names and "models/finetuned+wanda-50" in calls.names
    assert "models/wanda-50-npo-sau-lr0.001-s0" in calls.names and "eval/finetuned" in calls.names
    assert "models/retain" not in calls.names and "eval/retain" not in calls.names
    assert "models/retain+wanda-50" not in calls.names
    out = (tmp_path / "stages" / "models" / "finetuned" / "output.txt").read_text()
    assert out == read_stage(tmp_path / "stages" / "models" / "finetuned")["hash"]


def test_a_crashed_run_resumes_after_its_finished_stages(tmp_path, calls):
    calls.fail = "eval/finetuned+wanda"  # stands for a kill between stages
    with pytest.raises(StageFailed, match="run the same command again"):
        run(RECIPE, tmp_path)
    done = list(calls.names)
    assert "models/finetuned" in done and "eval/retain" in done
    for name in done:
        assert read_stage(tmp_path / "stages" / name) is not None
    failed = tmp_path / "stages" / "eval" / "finetuned+wanda-50"
    assert not failed.exists() and not (failed.parent / ".finetuned+wanda-50.tmp").exists()
    before = mtimes(tmp_path)
    calls.fail, calls.names[:] = None, []
    run(RECIPE, tmp_path)
    assert not set(done) & set(calls.names)
    assert calls.names[0] == "eval/finetuned+wanda-50"
    after = mtimes(tmp_path)
    assert all(after[k] == v for k, v in before.items())


def test_half_written_and_stale_outputs_are_never_reused(tmp_path, calls):
    run(RECIPE, tmp_path)
    stage_dir = tmp_path / "stages" / "models" / "finetuned+magnitude-50"
    # a killed run leaves a temporary directory; a stale output carries another hash
    tmp = stage_dir.parent / ".finetuned+magnitude-50.tmp"
    tmp.mkdir()
    (tmp / "junk").write_text("half")
    doc = json.loads((stage_dir / STAGE_FILE).read_text())
    doc["hash"] = "0" * 20
    (stage_dir / STAGE_FILE).write_text(json.dumps(doc))
    calls.names.clear()
    run(RECIPE, tmp_path)
    assert calls.names[0] == "models/finetuned+magnitude-50"
    assert not tmp.exists() and (stage_dir / "output.txt").read_text() == read_stage(stage_dir)["hash"] != "0" * 20
    # the output without stage.json (killed before the rename) is not trusted either
    os.remove(stage_dir / STAGE_FILE)
    calls.names.clear()
    run(RECIPE, tmp_path)
    assert "models/finetuned+magnitude-50" in calls.names


def test_a_bad_recipe_fails_before_any_work(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {shape: tiny}\nunlearn: {objective: [npo]}\n")
    out = tmp_path / "out"
    assert cli_main(["run", str(recipe), "--output", str(out), "unlearn.learnig_rate=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'unlearn.learnig_rate'" in err and "did you mean 'unlearn.learning_rate'" in err
    assert cli_main(["run", str(recipe), "--output-dir", str(out), "unlearn.sau=perhaps"]) == 2
    assert "unlearn.sau: expected true or false" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_lists_the_stages(tmp_path, capsys, calls):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {shape: tiny}\nunlearn: {objective: [npo], sau: [true]}\nprune: {method: [wanda]}\n")
    assert cli_main(["run", str(recipe), "--output", str(tmp_path / "o"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    lines = lines[:lines.index("")]  # the stages; the memory estimate follows (tests/pipeline/test_memory.py)
    assert any("unlearn" in line and "wanda-50-npo-sau-lr1e-05-s0" in line for line in lines)
    assert all(line.startswith("to run") for line in lines) and calls.names == []
