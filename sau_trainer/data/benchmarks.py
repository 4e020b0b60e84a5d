"""Moved (issue 25: a benchmark is one package): the registry to `sau_trainer.benchmarks.registry`, the `Benchmark` contract to
`sau_trainer.benchmarks.base`, each protocol's class and `ReportSpec` to its package (`sau_trainer.benchmarks.tofu`,
`.muse`, `.wmdp`). This path stays and re-exports their names; new code imports from `sau_trainer.benchmarks`."""

from __future__ import annotations

from ..benchmarks.base import Benchmark
from ..benchmarks.muse.benchmark import MuseStyleBenchmark
from ..benchmarks.muse.report import MUSE_REPORT
from ..benchmarks.registry import BENCHMARKS, get_benchmark, load_benchmark
from ..benchmarks.report_spec import ForgetMetric, ReportSpec
from ..benchmarks.tofu.benchmark import GENERAL_SPLITS, TofuStyleBenchmark
from ..benchmarks.tofu.report import TOFU_REPORT
from ..benchmarks.wmdp.benchmark import WmdpStyleBenchmark
from ..benchmarks.wmdp.report import WMDP_REPORT

__all__ = ["BENCHMARKS", "Benchmark", "ForgetMetric", "GENERAL_SPLITS", "MUSE_REPORT", "MuseStyleBenchmark", "ReportSpec",
           "TOFU_REPORT", "TofuStyleBenchmark", "WMDP_REPORT", "WmdpStyleBenchmark", "get_benchmark", "load_benchmark"]
