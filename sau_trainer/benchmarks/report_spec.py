"""What the report shows of a benchmark (`ReportSpec`) and the forget metrics it compares runs on (`ForgetMetric`).

Each benchmark package defines its own `ReportSpec` (``tofu/report.py``, ...); the pipeline's report reads it from
the registry entry. This module imports nothing of the package."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForgetMetric:
    """A forget metric the report compares runs on (`better`: which direction means more forgetting)."""

    key: str
    label: str
    short: str
    better: str  # "max" or "min"
    log: bool = False
    axis: str = ""  # the plot's axis label (default: the label and the direction)


@dataclass(frozen=True)
class ReportSpec:
    """What the report shows for a benchmark: table columns, the utility axis and two forget metrics."""

    columns: tuple[tuple[str, str], ...]
    utility: str
    utility_label: str
    forget: tuple[ForgetMetric, ForgetMetric]
    notes: tuple[str, ...] = ()
    definitions: tuple[tuple[str, str], ...] = ()  # (column label, what it measures and which direction is better)

    @property
    def curve_keys(self) -> tuple[str, ...]:
        keys = [self.utility] + [m.key for m in self.forget] + [k for _, k in self.columns]
        return tuple(dict.fromkeys(keys))


__all__ = ["ForgetMetric", "ReportSpec"]
