"""Runs that share an output directory take other ready tasks while the one they want is locked by another process
(pipeline/scheduling.py), instead of idling until its lock frees; every task still runs once."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from sau_testing import OneProcess

from sau_trainer.pipeline import locks, validate
from sau_trainer.pipeline.scheduling import NO_CLAIM, schedule
from sau_trainer.pipeline.stages import plan

WORKER = Path(__file__).parent / "grid_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def task(name, *deps):
    return SimpleNamespace(name=name, deps={d: d for d in deps})


class FakeLocks:
    """Locks held by another process for a number of attempts each; then free (this run takes them) or finished
    meanwhile by the other process (`done`: reused)."""

    def __init__(self, held_for: dict[str, int], done=()):
        self.held_for, self.done, self.tries = dict(held_for), set(done), Counter()

    def claim(self, t):
        self.tries[t.name] += 1
        if self.held_for.get(t.name, 0) > 0:
            self.held_for[t.name] -= 1
            return locks.HELD
        return None if t.name in self.done else f"lock:{t.name}"


def test_a_locked_task_is_passed_by_for_ready_ones_and_taken_once_its_lock_frees():
    tasks = [task("tok"), task("ft", "tok"), task("retain", "tok"), task("prune", "ft"), task("unlearn", "prune"),
             task("eval/retain", "retain"), task("eval/unlearn", "unlearn", "eval/retain"), task("report",
                                                                                               "eval/unlearn")]
    fake = FakeLocks({"retain": 3}, done={"retain"})
    waits, taken = [], []
    for t, got in schedule(tasks, lambda t: t.name != "report", fake.claim, sleep=waits.append, poll_s=0.5,
                           on_wait=lambda held: taken.append(("wait", [h.name for h in held]))):
        taken.append((t.name, got))
    # retain is held: ft, prune and unlearn (which do not read it) go first; it is retried after each task taken,
    # then waited for once nothing else is ready; what reads it comes after it
    assert taken == [("tok", "lock:tok"), ("ft", "lock:ft"), ("prune", "lock:prune"), ("unlearn", "lock:unlearn"),
                     ("wait", ["retain"]), ("retain", None), ("eval/retain", "lock:eval/retain"),
                     ("eval/unlearn", "lock:eval/unlearn"), ("report", NO_CLAIM)]
    assert waits == [0.5] and fake.tries["retain"] == 4  # tried after ft, prune, unlearn; then waited; then freed
    assert all(fake.tries[n] == 1 for n in ("tok", "ft", "prune", "unlearn", "eval/retain", "eval/unlearn"))


def test_only_locked_tasks_left_means_waiting_and_nothing_is_taken_before_its_dependencies():
    tasks = [task("a"), task("b", "a"), task("c", "a")]
    fake = FakeLocks({"a": 2})
    waits, order = [], []
    steps = schedule(tasks, lambda t: True, fake.claim, sleep=waits.append, poll_s=0.1)
    for t, _ in steps:
        order.append(t.name)
        if t.name == "a":  # nothing that reads a is even tried before the caller has dealt with it
            assert fake.tries["b"] == fake.tries["c"] == 0
    assert order == ["a", "b", "c"] and waits == [0.1, 0.1]


RECIPE = {"name": "grid", "model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]},
          "unlearn": {"objective": ["npo"], "sau": [False, True], "learning_rate": [1e-3], "seed": [0, 1]},
          "report": {"plot": False}}


def test_the_runner_takes_other_tasks_while_one_is_locked_here(tmp_path, monkeypatch):
    """In one process: a live holder (this test) keeps models/retain locked until the run reaches the last
    unlearning run; the run takes every task that does not read retain first (a run that waited would never get
    there: a timer frees the lock after 20 s so that such a run fails here instead of hanging)."""
    import threading

    from sau_trainer.pipeline import STAGES, run_recipe
    from sau_trainer.pipeline.stages import Stage

    sys.path.insert(0, str(Path(__file__).parent))
    from grid_worker import install_stand_ins

    for kind, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, stage)
    install_stand_ins()
    monkeypatch.setattr(locks, "POLL_S", 0.05)
    held = locks.try_acquire(locks.lock_path(tmp_path / "stages" / "models" / "retain"))
    last = "models/magnitude-50-npo-sau-lr0.001-s1"
    unlearn = STAGES["unlearn"]

    def release_at_the_last_run(ctx, task, out):
        if task.name == last:
            held.release()
        return unlearn.fn(ctx, task, out)

    monkeypatch.setitem(STAGES, "unlearn", Stage(release_at_the_last_run, False, True, ""))
    timer = threading.Timer(20, held.release)
    timer.start()
    try:
        summary = run_recipe(validate(RECIPE), tmp_path, state=OneProcess())
    finally:
        timer.cancel()
        held.release()
    order = [line.split()[0] for line in (tmp_path / "calls.log").read_text().splitlines()]
    runs = [n for n in order if n.startswith("models/") and "-npo-" in n]
    assert len(runs) == 8 and order.index("models/retain") > order.index(last) == max(map(order.index, runs))
    assert order.index("models/finetuned+magnitude-50") < order.index("models/retain")
    assert Counter(order) == Counter(t.name for t in plan(validate(RECIPE)) if t.kind != "report")
    assert "models/retain" in summary.ran


@pytest.mark.slow  # two subprocesses importing torch and transformers: 40-60 s on the 2-core machine
def test_two_workers_one_holding_a_long_task_the_other_runs_the_rest_meanwhile(tmp_path):
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAU_TRAINER_LOCK_POLL_S": "0.05",
           "GRID_WORKER_SLOW": "models/retain=4", "GRID_WORKER_BARRIER": f"{tmp_path / 'arrived'}:2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(recipe), "--output-dir", str(shared)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = [(name, pid, float(start), float(end)) for name, pid, start, end in
             (line.split() for line in (shared / "calls.log").read_text().splitlines())]
    cached = [t.name for t in plan(validate(RECIPE)) if t.kind != "report"]
    assert Counter(name for name, *_ in lines) == Counter(cached)  # every task ran exactly once, in one worker
    _, holder, start, end = next(x for x in lines if x[0] == "models/retain")
    meanwhile = [name for name, pid, s, e in lines if pid != holder and s > start and e < end]
    assert len(meanwhile) >= 3, (meanwhile, lines)  # the other worker did not idle while retain was locked
    assert not list((shared / "stages").rglob(".*.lock"))
