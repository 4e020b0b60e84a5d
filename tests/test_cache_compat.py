"""Cache compatibility: an existing output directory stays valid (nothing recomputed) across a restructuring.

The runner reuses a finished task only when it plans the same hash for it. tests/data/task_hashes.json holds
the hash of every task of every shipped recipe (and of demo variants that spell every objective's settings in
each way a recipe can), as the code that wrote it planned them; tests/data/cache_compat/output is an output
directory that code wrote. Both are made by ``python tests/task_hashes.py`` (see there for when to regenerate).
"""

from __future__ import annotations

import json
import shutil

import pytest
from task_hashes import COMPAT_DIR, SNAPSHOT, planned_hashes, recipe_cases, run_stand_in

EXPECTED = json.loads(SNAPSHOT.read_text())
CASES = recipe_cases()


def test_the_snapshot_covers_every_shipped_recipe():
    assert sorted(EXPECTED) == sorted(CASES), "a recipe was added or removed: regenerate tests/data/task_hashes.json"


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_task_keeps_its_hash(name):
    path, overrides = CASES[name]
    planned = planned_hashes(path, overrides)
    expected = EXPECTED[name]
    assert sorted(planned) == sorted(expected), "the same tasks are planned"
    changed = sorted(t for t in expected if planned[t] != expected[t])
    assert not changed, f"{name}: {len(changed)} of {len(expected)} task hashes changed, e.g. {changed[:3]}"


def test_an_existing_output_directory_is_reused(tmp_path):
    out = tmp_path / "output"
    shutil.copytree(COMPAT_DIR / "output", out)
    ran = run_stand_in(COMPAT_DIR / "recipe.yaml", out)
    assert ran == ["report"], f"recomputed: {[t for t in ran if t != 'report']}"  # the report is always rewritten


def test_a_changed_objective_setting_is_not_reused(tmp_path):
    """The reuse above is not vacuous: changing UNDIAL's beta recomputes exactly its runs and what reads them."""
    out = tmp_path / "output"
    shutil.copytree(COMPAT_DIR / "output", out)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((COMPAT_DIR / "recipe.yaml").read_text().replace("undial_beta: 5.0", "undial_beta: 6.0"))
    ran = run_stand_in(recipe, out)
    assert ran and all("-undial-" in t or t == "report" for t in ran)
    assert any(t.startswith("models/") for t in ran)
