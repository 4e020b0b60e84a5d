"""A retain model's results are a reference only for an evaluation on the same rows.

privleak compares two min-k AUCs, the evaluated model's and the retain model's, each measured on members (MUSE:
``privleak/forget``) against non-members (``privleak/holdout``). An AUC over 30 + 30 rows and one over 100 + 100
rows are different estimates of different things (the first 30 rows are not a sample of the 100), so a reference
evaluated on other row counts (``--max-rows``) is refused before anything is computed or reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def mia_row_counts(results: Mapping[str, Any]) -> tuple[int, int] | None:
    """(members, non-members) scored by membership inference in `results`, or None when it did not run."""
    try:
        mia = results["per_example"]["mia"]
        return len(mia["forget"]["min_k"]), len(mia["holdout"]["min_k"])
    except (KeyError, TypeError):
        return None


def reference_row_problem(counts: tuple[int, int] | None,
                          retain_results: Mapping | str | Path | None) -> str | None:
    """Why `retain_results` cannot be the privleak reference of an evaluation on `counts` (members,
    non-members) rows, or None when it can (same counts, or either side without membership inference)."""
    from .results import load_results

    if counts is None or retain_results is None:
        return None
    ref = load_results(retain_results)
    ref_counts = mia_row_counts(ref)
    if ref_counts is None or tuple(ref_counts) == tuple(counts):
        return None
    where = ref.get("path") or "the retain results"
    return (f"the retain results ({where}) scored {ref_counts[0]} member and {ref_counts[1]} non-member rows in "
            f"membership inference (MUSE: privleak/forget and privleak/holdout), this evaluation {counts[0]} and "
            f"{counts[1]}: privleak compares min-k AUCs, which are comparable only on the same rows. Evaluate both "
            "models with the same row limit (--max-rows / max_rows=), or give retain results computed on these rows.")
