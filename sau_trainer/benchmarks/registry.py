"""The benchmark registry: one entry per benchmark, read by the CLI, the recipe schema, the pipeline, the report and
the memory estimate (registries are the only lists of names).

`BENCHMARKS` starts empty here; the package's ``__init__`` fills it with the built-in benchmarks
(`sau_trainer.benchmarks.builtin`) before any of its modules can be used, and
`sau_trainer.register_benchmark` adds a plugin's. Nothing here imports a benchmark, so the shared evaluation
code may look names up without an import circle.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .base import Benchmark

BENCHMARKS: dict[str, Benchmark] = {}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`, with a clear error listing the others."""
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


def load_benchmark(name: str = "tofu", data_dir: str | Path | None = None, preset: str = "tiny", seed: int = 0,
                   splits: Iterable[str] | None = None, subset: str | None = None) -> dict[str, list[dict]]:
    """Splits of a registered benchmark. Generated ones (``synthetic``, ``synthetic-muse``) are made from
    (`preset`, `seed`) unless `data_dir` holds written files; the others read `data_dir` or the Hub
    (`subset`: ``news`` or ``books`` for ``muse``)."""
    bench = get_benchmark(name)
    problems = bench.check_options(subset=subset)
    if problems:
        raise ValueError("; ".join(problems) + ".")
    return bench.load(splits=splits, data_dir=data_dir, preset=preset, seed=seed, subset=subset)


__all__ = ["BENCHMARKS", "get_benchmark", "load_benchmark"]
