"""The report's shared vocabulary: method keys and labels, number and table formatting, the starting model of a run,
and figure saving. A low module: report.py, report_verdicts, report_summary, report_plots and robustness_report
import it, and it imports none of them (so the report's pieces form no import circle)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .comparisons import grid_key

SIDE_NAMES = {"sau": "SAU", "plain": "plain", "sparse-plain": "plain on the sparse model",
              "dense-plain": "plain on the dense model"}


def objective_label(name: Any) -> str:
    """The objective's display name (its class's `label`), else its registry name."""
    from ..objectives import OBJECTIVES

    cls = OBJECTIVES.get(name)
    return (cls.label if cls is not None else "") or str(name)


def method_key(row: dict) -> tuple:
    """Rows of one method differ only in learning rate and seed."""
    return (row["model"], row["pruning"], row["target_sparsity"], row["objective"], row["sau"],
            row.get("unlearn_then_prune", False), grid_key(row.get("grid")))


def grid_label(grid: dict | None) -> str:
    """`` (sau_alpha=1, ...)`` for the extra grid axes' values, empty without."""
    return f" ({', '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}' for k, v in grid.items())})" \
        if grid else ""


def method_label(row: dict) -> str:
    obj = objective_label(row["objective"])
    obj += ("+SAU" if row["sau"] else " plain") + grid_label(row.get("grid"))
    if row.get("unlearn_then_prune"):
        return f"dense {obj}, then {row['pruning']} {row['target_sparsity']:.0%}"
    where = "dense" if row["pruning"] is None else f"{row['pruning']} {row['target_sparsity']:.0%}"
    return f"{where} · {obj}"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def lr_text(lr: Any) -> str:
    """A learning rate as the report prints it: the shortest text that reads back as the same float (``0.0012``,
    ``4.5e-05``), so distinct rates never print alike (``_fmt``'s 3 decimals made 1.2e-3 read ``0.001``)."""
    if lr is None:
        return "–"
    return repr(float(lr)) if isinstance(lr, int | float) and not isinstance(lr, bool) else str(lr)


def _table(rows: list[dict], columns: list[tuple[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(get(r)) for _, get in columns) + " |")
    return lines


def start_reference(rows: Sequence[Mapping], run: Mapping) -> Mapping | None:
    """The reference row of the model `run` started from: the finetuned model for a dense run, the finetuned model
    pruned the same way (same pruning label and target sparsity) for a sparse one."""
    for r in rows:
        if r.get("reference") and r.get("model") == "finetuned":
            if run.get("model") == "dense" and r.get("pruning") is None:
                return r
            if run.get("model") == "sparse" and r.get("pruning") == run.get("pruning") and \
                    r.get("target_sparsity") == run.get("target_sparsity"):
                return r
    return None


def _short_lr(lr: float) -> str:
    """``4e-4`` for 0.0004, ``1.2e-3`` for 0.0012 (a learning rate as a plot label)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
