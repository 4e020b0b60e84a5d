"""Errors writing a run's files end in one line, keep the finished work, and leave nothing half written."""

import errno
import json
import pathlib
from types import SimpleNamespace

import pytest

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import STAGES
from sau_trainer.pipeline.runner import read_stage
from sau_trainer.pipeline.stages import Stage

RECIPE = {"model": {"shape": "tiny"}, "prune": {"enabled": False},
          "unlearn": {"model": ["dense"], "objective": ["npo"], "sau": [True], "learning_rate": [1e-3]}}


@pytest.fixture
def calls(monkeypatch):
    record = SimpleNamespace(names=[])

    def make(kind):
        def fn(ctx, task, out):
            record.names.append(task.name)
            (out / "output.txt").write_text(task.hash)
            return {"kind": kind}
        return fn

    for kind, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, Stage(make(kind), stage.distributed, stage.cached, stage.help))
    return record


def test_a_full_disk_while_writing_stage_json_is_one_line_and_resumable(tmp_path, calls, monkeypatch, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    real = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if "stage.json" in self.name and "finetuned" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    assert cli_main(["run", str(recipe), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("sau-trainer run: error:")]
    assert len(lines) == 1 and "models/finetuned" in lines[0] and "the disk is full" in lines[0]
    assert read_stage(out / "stages" / "tokenizer") is not None  # finished work is kept
    assert not (out / "stages" / "models" / "finetuned").exists()
    assert not (out / "stages" / "models" / ".finetuned.tmp").exists()  # nothing half written to reuse
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    calls.names.clear()
    assert cli_main(["run", str(recipe), "--output-dir", str(out)]) == 0
    assert "tokenizer" not in calls.names and "models/finetuned" in calls.names


@pytest.mark.parametrize("where", ["/proc/sau-trainer-test", "file/below"])
def test_an_output_dir_that_cannot_be_written_is_one_line(tmp_path, calls, capsys, where):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    if where == "file/below":
        (tmp_path / "file").write_text("x")
        where = str(tmp_path / where)
    assert cli_main(["run", str(recipe), "--output-dir", where]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and where in err and calls.names == []
