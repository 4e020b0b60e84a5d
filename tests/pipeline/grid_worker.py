"""`sau-trainer run` with stand-in stages (no models), for the tests of runs that share an output directory.

    python tests/pipeline/grid_worker.py RUN-ARGS...

Every stage but the report is replaced by one that sleeps a little (so concurrent runs overlap), appends
``<task name> <pid> <start> <end>`` (times.time()) to ``OUTPUT/calls.log`` and writes an output derived from its
hash; evaluations write a results.json whose metrics are a function of the task name, so the real report stage has
rows to report. ``GRID_WORKER_SLOW=NAME=SECONDS`` makes one task sleep longer; ``GRID_WORKER_BARRIER=DIR:N`` makes
the worker wait, before it runs anything, until N workers have arrived (so that their runs overlap).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

SLEEP_S = float(os.environ.get("GRID_WORKER_SLEEP_S", "0.05"))
SLOW = os.environ.get("GRID_WORKER_SLOW", "").rpartition("=")


def _barrier(spec: str) -> None:
    folder, _, n = spec.rpartition(":")
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    deadline = time.monotonic() + 300
    while len(list(Path(folder).iterdir())) < int(n) and time.monotonic() < deadline:
        time.sleep(0.05)


def _metric(name: str, key: str) -> float:
    return int(hashlib.sha256(f"{name}/{key}".encode()).hexdigest()[:6], 16) / 0xFFFFFF


def install_stand_ins(calls_log: Path | None = None) -> None:
    from sau_trainer.evaluation.results import RESULTS_FORMAT, RESULTS_VERSION
    from sau_trainer.pipeline import STAGES
    from sau_trainer.pipeline.stages import Stage

    def make(kind):
        def fn(ctx, task, out):
            start = time.time()
            time.sleep(float(SLOW[2]) if SLOW[0] and task.name == SLOW[0] else SLEEP_S)
            log = calls_log or ctx.output_dir / "calls.log"
            with open(log, "a") as f:  # one short O_APPEND write per line: lines never interleave
                f.write(f"{task.name} {os.getpid()} {start:.6f} {time.time():.6f}\n")
            (out / "output.txt").write_text(task.hash)
            if kind == "evaluate":
                name = task.meta.get("name")
                summary = {k: _metric(name, k) for k in ("model_utility", "forget_quality", "forget_rouge")}
                doc = {"format": RESULTS_FORMAT, "version": RESULTS_VERSION, "summary": summary,
                       "model": {"measured_sparsity": float(task.meta.get("target_sparsity") or 0.0)},
                       "per_example": {}}
                (out / "results.json").write_text(json.dumps(doc))
            return {"kind": kind}
        return fn

    for kind, stage in list(STAGES.items()):
        if kind != "report":
            STAGES[kind] = Stage(make(kind), stage.distributed, stage.cached, stage.help)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    install_stand_ins()
    from sau_trainer.cli import main

    if os.environ.get("GRID_WORKER_BARRIER"):
        _barrier(os.environ["GRID_WORKER_BARRIER"])
    sys.exit(main(["--log-level", "WARNING", "run", *sys.argv[1:]]))
