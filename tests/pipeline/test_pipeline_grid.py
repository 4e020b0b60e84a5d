"""Grids spread over several runs on one output directory (`--tasks`, one lock per task), with stand-in stages
(tests/pipeline/grid_worker.py): every task runs once whoever needs it, and the report equals a sequential run's."""

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sau_testing import OneProcess

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import StageFailed, run_recipe, validate
from sau_trainer.pipeline.locks import lock_path, try_acquire
from sau_trainer.pipeline.runner import executions_path, hash_tasks, read_stage, select_tasks
from sau_trainer.pipeline.stages import plan

sys.path.insert(0, str(Path(__file__).parent))
from grid_worker import install_stand_ins  # noqa: E402

WORKER = Path(__file__).parent / "grid_worker.py"
ROOT = Path(__file__).resolve().parents[2]
RECIPE = {"name": "grid", "model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]},
          "unlearn": {"objective": ["npo"], "sau": [False, True], "learning_rate": [1e-3], "seed": [0, 1]},
          "report": {"plot": False}}


@pytest.fixture
def stand_ins(monkeypatch):
    from sau_trainer.pipeline import STAGES

    for kind, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, stage)  # restored after the test
    install_stand_ins()


def calls(out: Path) -> list[str]:
    return [line.split()[0] for line in (out / "calls.log").read_text().splitlines()]


def stage_docs(out: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(out / "stages")): json.loads(p.read_text())
            for p in (out / "stages").rglob("stage.json")}


@pytest.mark.slow  # two subprocesses importing torch and transformers: 40-50 s on the 2-core machine
def test_two_concurrent_task_runs_then_a_plain_run_equal_a_sequential_run(tmp_path, stand_ins):
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAU_TRAINER_LOCK_POLL_S": "0.05",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(recipe), "--output-dir", str(shared), "--tasks",
                               pattern], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pattern in ("models/*-s0", "models/*-s1")]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    pids = {line.split()[1] for line in (shared / "calls.log").read_text().splitlines()}
    assert len(pids) == 2  # both runs did work
    partial = json.loads((shared / "report.json").read_text())
    assert partial["runs"] == [] and "eval/finetuned" in partial["pending"]  # nothing evaluated yet, listed
    assert "eval/finetuned" in (shared / "report.md").read_text()

    summary = run_recipe(validate(RECIPE), shared, state=OneProcess())
    sequential = tmp_path / "sequential"
    run_recipe(validate(RECIPE), sequential, state=OneProcess())

    tasks = plan(validate(RECIPE))
    cached = [t.name for t in tasks if t.kind != "report"]
    assert Counter(calls(shared)) == Counter(cached)  # every task ran exactly once, in one of the three runs
    assert summary.ran and not [n for n in summary.ran if n.startswith("models/") and n[-3:] in ("-s0", "-s1")]
    docs = stage_docs(shared)
    assert set(docs) == set(cached) and {d["executions"] for d in docs.values()} == {1}
    assert {n for n, d in stage_docs(sequential).items()} == set(cached)
    report = json.loads((shared / "report.json").read_text())
    assert "pending" not in report and len(report["runs"]) == 8
    assert report == json.loads((sequential / "report.json").read_text())
    assert not list((shared / "stages").rglob(".*.lock"))  # every lock was released


def test_tasks_selects_matches_and_their_dependencies():
    tasks = plan(validate(RECIPE))
    hash_tasks(tasks)
    chosen = select_tasks(tasks, ["eval/magnitude-50-npo-sau-*-s1"])
    assert chosen == {"tokenizer", "models/finetuned", "models/retain", "models/finetuned+magnitude-50",
                      "models/retain+magnitude-50", "models/magnitude-50-npo-sau-lr0.001-s1", "eval/retain",
                      "eval/retain+magnitude-50", "eval/magnitude-50-npo-sau-lr0.001-s1", "report"}


def test_a_pattern_that_matches_nothing_is_a_clear_error(tmp_path, capsys, stand_ins):
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "out"
    assert cli_main(["run", str(recipe), "--output-dir", str(out), "--tasks", "models/*-s0,models/*-s7"]) == 2
    err = capsys.readouterr().err
    assert "--tasks 'models/*-s7' matches none of the recipe's" in err and "models/finetuned" in err
    assert "Traceback" not in err and not out.exists()
    assert cli_main(["run", str(recipe), "--output-dir", str(out), "--dry-run", "--tasks", "eval/retain*"]) == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("to run")]
    assert listed == ["tokenizer", "models/retain", "models/retain+magnitude-50", "eval/retain",
                      "eval/retain+magnitude-50", "report"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_crashed_holders_lock_is_recovered_and_counted(tmp_path, stand_ins):
    # a holder on this host whose process is gone, and one on another host that stopped its heartbeat
    dead = lock_path(tmp_path / "stages" / "tokenizer")
    dead.parent.mkdir(parents=True)
    dead.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "token": "a"}))
    silent = lock_path(tmp_path / "stages" / "models" / "finetuned")
    silent.parent.mkdir(parents=True)
    silent.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "b"}))
    old = time.time() - 3600
    os.utime(silent, (old, old))
    tmp = tmp_path / "stages" / ".tokenizer.tmp"  # what the crashed run left
    tmp.mkdir()
    counter = executions_path(tmp_path, "tokenizer")
    counter.parent.mkdir(parents=True)
    counter.write_text("1\n")
    run_recipe(validate(RECIPE), tmp_path, state=OneProcess())
    assert read_stage(tmp_path / "stages" / "tokenizer")["executions"] == 2  # the crash forced a re-run
    assert read_stage(tmp_path / "stages" / "models" / "finetuned")["executions"] == 1
    assert not dead.exists() and not silent.exists() and not tmp.exists()
    assert calls(tmp_path).count("tokenizer") == 1


def test_a_live_lock_is_waited_for_and_a_failure_counts_as_an_execution(tmp_path, stand_ins, monkeypatch):
    import threading

    from sau_trainer.pipeline import STAGES, locks
    from sau_trainer.pipeline.stages import Stage

    monkeypatch.setattr(locks, "POLL_S", 0.05)
    held = try_acquire(lock_path(tmp_path / "stages" / "tokenizer"))  # a live holder (this process)
    released = []
    timer = threading.Timer(0.5, lambda: (released.append(time.monotonic()), held.release()))
    timer.start()
    boom = STAGES["evaluate"]

    def fail_once(ctx, task, out):
        if task.name == "eval/finetuned":
            raise RuntimeError("boom")
        return boom.fn(ctx, task, out)

    monkeypatch.setitem(STAGES, "evaluate", Stage(fail_once, False, True, ""))
    with pytest.raises(StageFailed):
        run_recipe(validate(RECIPE), tmp_path, state=OneProcess())
    timer.join()
    assert released and calls(tmp_path)[0] == "tokenizer"  # it waited for the holder, then ran the task
    monkeypatch.setitem(STAGES, "evaluate", boom)
    run_recipe(validate(RECIPE), tmp_path, state=OneProcess())
    docs = stage_docs(tmp_path)
    assert docs["eval/finetuned"]["executions"] == 2
    assert {d["executions"] for n, d in docs.items() if n != "eval/finetuned"} == {1}
    run_recipe(validate(RECIPE), tmp_path, state=OneProcess(), force=True)
    assert {d["executions"] for n, d in stage_docs(tmp_path).items() if n != "eval/finetuned"} == {2}
