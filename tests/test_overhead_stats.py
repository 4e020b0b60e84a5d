"""The statistics of benchmarks/overhead.py (the README's Performance section rests on them): the run orders are
balanced as its docstring and the README say, and the round bootstrap brackets the ratio of medians."""

import itertools
import statistics
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from overhead import ratio_interval, round_order  # noqa: E402


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_round_orders_balance_positions_and_predecessors(n):
    kinds = [f"k{i}" for i in range(n)]
    period = n if n % 2 == 0 else 2 * n
    orders = [round_order(kinds, r) for r in range(1, 1 + period)]  # any `period` consecutive rounds
    assert all(sorted(o) == kinds for o in orders)
    positions = Counter((k, i) for o in orders for i, k in enumerate(o))
    pairs = Counter((a, b) for o in orders for a, b in itertools.pairwise(o))
    per = period // n
    assert set(positions.values()) == {per} and len(positions) == n * n
    assert set(pairs.values()) == {per} and len(pairs) == n * (n - 1)


def test_round_bootstrap_brackets_the_ratio_and_collapses_without_spread():
    same = [[2.0, 2.0, 2.0]] * 6
    assert ratio_interval([[2.2] * 3] * 6, same) == (pytest.approx(1.1), pytest.approx(1.1))
    num = [[2.0 + 0.01 * r, 2.1, 1.9 + 0.02 * r] for r in range(8)]
    den = [[2.0, 2.0 - 0.01 * r, 2.05] for r in range(8)]
    lo, hi = ratio_interval(num, den)
    point = statistics.median(x for r in num for x in r) / statistics.median(x for r in den for x in r)
    assert lo <= point <= hi and lo < hi
    # whole rounds are drawn: a round missing from one kind is left out for both
    assert ratio_interval(num + [[]], den + [[5.0]]) == (lo, hi)
