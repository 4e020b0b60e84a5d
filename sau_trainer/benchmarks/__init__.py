"""Benchmarks: one package per benchmark protocol (``tofu/``, ``muse/``, ``wmdp/``: its data loading, its
evaluation, its report definitions and its registry class), the contract every benchmark follows (`base`), and the
one registry (`registry.BENCHMARKS`).

Who imports whom: a benchmark package may import `sau_trainer.data` (tokenisation, QA rows, the built-in
generators), the shared metric code of `sau_trainer.evaluation` (metrics, membership inference, results files,
compat modes) and `base` / `report_spec` / `registry` here; none of those imports a benchmark package. The
pipeline, the CLI and the report import benchmarks through the registry. A new benchmark is a new package here
(or a plugin's class passed to `sau_trainer.register_benchmark`); see CONTRIBUTING.md.
"""

from ..lazy import lazy_exports
from . import builtin  # noqa: F401  (fills the registry with the built-in benchmarks)

# Public name -> module, imported on first use.
_EXPORTS = {
    "BENCHMARKS": "registry",
    "Benchmark": "base",
    "ForgetMetric": "report_spec",
    "MUSE_REPORT": "muse.report",
    "MuseStyleBenchmark": "muse.benchmark",
    "ReportSpec": "report_spec",
    "TOFU_REPORT": "tofu.report",
    "TofuStyleBenchmark": "tofu.benchmark",
    "WMDP_REPORT": "wmdp.report",
    "WmdpStyleBenchmark": "wmdp.benchmark",
    "get_benchmark": "registry",
    "load_benchmark": "registry",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
