"""A grid job that runs no evaluation (`--tasks 'models/*'`, `--tasks tokenizer`) writes a partial report and exits 0."""

import json
from types import SimpleNamespace

import pytest

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import STAGES
from sau_trainer.pipeline.stages import Stage

RECIPE = """\
model: {shape: tiny}
prune: {method: [magnitude]}
unlearn: {objective: [npo], sau: [false, true], learning_rate: [1.0e-3]}
report: {plot: true}
"""


@pytest.fixture
def calls(monkeypatch):
    """Every stage but the report replaced by one that writes a file (the report is the real one)."""
    record = SimpleNamespace(names=[])

    def make(kind):
        def fn(ctx, task, out):
            record.names.append(task.name)
            (out / "output.txt").write_text(task.hash)
            return {"kind": kind}
        return fn

    for kind, stage in list(STAGES.items()):
        if kind != "report":
            monkeypatch.setitem(STAGES, kind, Stage(make(kind), stage.distributed, stage.cached, stage.help))
    return record


@pytest.mark.parametrize("tasks", ["models/*", "tokenizer"])
def test_a_grid_job_without_evaluations_writes_a_partial_report_and_exits_0(tmp_path, calls, capsys, tasks):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    assert cli_main(["run", str(recipe), "--output-dir", str(out), "--tasks", tasks]) == 0
    assert "error" not in capsys.readouterr().err
    assert calls.names and not any(n.startswith("eval/") for n in calls.names)
    report = json.loads((out / "report.json").read_text())
    assert report["runs"] == [] and report["references"] == []
    assert "eval/finetuned" in report["pending"] and "eval/magnitude-50-npo-sau-lr0.001-s0" in report["pending"]
    assert "Not finished yet" in (out / "report.md").read_text()
    assert not (out / "tradeoff.png").exists()  # nothing to draw yet


def test_the_tradeoff_plot_draws_references_without_runs(tmp_path):
    """A reference row without the metrics the plot needs draws nothing: no empty legend (matplotlib refuses it)."""
    from sau_trainer.pipeline.report import plot_tradeoff

    rows = [{"name": "finetuned", "model": "finetuned", "pruning": None, "target_sparsity": 0.0, "reference": True,
             "metrics": {}, "objective": None, "sau": False, "learning_rate": None, "seed": 0}]
    plot_tradeoff(rows, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
