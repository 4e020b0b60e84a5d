"""Time the demo end to end (SPEC 6: under 10 minutes on a 2-core CPU) and print where the time goes.

    python benchmarks/demo_time.py                       # runs recipes/demo.yaml into a temporary directory
    python benchmarks/demo_time.py --output-dir /tmp/demo  # or reads the stage times of an existing run
    python benchmarks/demo_time.py --recipe R.yaml key=value ...

The per-stage times come from each stage's stage.json (`elapsed_s`), so a cached stage keeps the time of
the run that made it. A run made here also prints its CPU time (user + system of the child process): the demo
runs on one thread, so on a busy machine, where wall time means little, the CPU time is close to what the wall
time would be on an idle one (a little above it: a shared core's caches are shared too).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage_times(output_dir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    for path in (output_dir / "stages").rglob("stage.json"):
        doc = json.loads(path.read_text())
        times[doc["kind"]].append(float(doc.get("elapsed_s", 0.0)))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--output-dir", "--output", dest="output_dir", default=None,
                        help="an existing run to summarise (nothing is run if it has a report.json)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="sau-demo-"))
    wall = None
    if not (out / "report.json").is_file():
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [sys.executable, "-m", "sau_trainer", "run", args.recipe, "--output-dir", str(out), *args.overrides]
        code = subprocess.call(cmd)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if code:
            return code
    times = stage_times(out)
    print(f"\n{'stage':10s} {'count':>6s} {'total s':>9s} {'mean s':>8s}")
    for kind, values in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"{kind:10s} {len(values):6d} {sum(values):9.1f} {sum(values) / len(values):8.2f}")
    print(f"{'all':10s} {sum(map(len, times.values())):6d} {sum(map(sum, times.values())):9.1f}")
    if wall is not None:
        print(f"\nwall time: {wall:.1f} s ({wall / 60:.1f} min; target < 10 min on a 2-core CPU) -> {out}")
        print(f"CPU time:  {cpu:.1f} s ({cpu / 60:.1f} min; about the idle wall time of a one-thread run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
