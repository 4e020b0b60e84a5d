"""Robustness of forgetting in a recipe run: the attack settings, their recipe checks and their place in the report
(the attack stages and their planning: `pipeline/attacks.py`).

``evaluate.robustness`` lists attacks (`sau_trainer.robustness.parse_attack`); each one makes an attacked copy
of every unlearned model, a cached stage of its own (``models/<run>@<attack>``; pruning attacks are prune
stages named ``models/<run>+<pruning>``, the names the unlearn-then-prune check always used), and evaluates it
with the run's own benchmark protocol (``eval/<run>@<attack>``). Adding an attack to a finished run computes
only the attack: the attack settings enter no other task's hash. ``unlearn.then_prune`` means the prune
attacks of the recipe's own pruning settings on the dense runs, listed as their own report rows as before.

Each report row of an unlearning run gains ``"robustness": {"<attack>": {...summary...}}`` with the attacked
model's summary under the same metric names (``{"skipped": "<reason>"}`` where bitsandbytes cannot run).
"""

from __future__ import annotations

from dataclasses import asdict

from ..robustness import Attack, parse_attack
from .robustness_report import (  # noqa: F401  (re-exported: the attacks' place in the report lives there)
    markdown_section,
    matched_runs,
    plot_robustness,
    robustness_table,
)

SKIPPED_FILE = "skipped.json"
RELEARN_FILE = "relearn.json"
# EvaluateSection fields that configure the attacks: they enter only the attack tasks' hashes
ROBUSTNESS_KEYS = ("robustness", "relearn_fraction", "relearn_epochs", "relearn_learning_rate", "relearn_seed",
                   "relearn_keep_sparsity", "relearn_judge_on_relearned_rows")


def evaluation_settings(e) -> dict:
    """``asdict(evaluate)`` without the attack settings (so adding an attack changes no evaluation's hash)."""
    return {k: v for k, v in asdict(e).items() if k not in ROBUSTNESS_KEYS and k != "device_map"}


def attacks_of(recipe) -> list[Attack]:
    return [parse_attack(name) for name in (recipe.evaluate.robustness or [])]


def check(recipe, errors: list[str]) -> None:
    """Recipe checks of ``evaluate.robustness`` and the relearning settings (called by the schema)."""
    e = recipe.evaluate
    names = e.robustness or []
    if len(set(names)) != len(names):
        errors.append(f"evaluate.robustness: repeated entries in {names!r}")
    for i, name in enumerate(names):
        try:
            parse_attack(name)
        except ValueError as err:
            errors.append(f"evaluate.robustness[{i}]: {err}")
    if names and e.device_map is not None:
        errors.append(f"evaluate.device_map={e.device_map!r} with evaluate.robustness: attacked models are loaded on "
                      "one device, not spread; remove one of the two (run the attacks in a recipe without device_map)")
    if not 0 < e.relearn_fraction <= 1:
        errors.append(f"evaluate.relearn_fraction: must be in (0, 1], got {e.relearn_fraction!r}")
    if e.relearn_epochs <= 0:
        errors.append(f"evaluate.relearn_epochs: must be > 0, got {e.relearn_epochs!r}")
    if e.relearn_learning_rate is not None and not e.relearn_learning_rate > 0:
        errors.append(f"evaluate.relearn_learning_rate: must be > 0 or null (the run's own), "
                      f"got {e.relearn_learning_rate!r}")


# ----------------------------------------------------------------------------------------- report
def fold_attacks(rows: list[dict]) -> list[dict]:
    """Attach every attacked copy's metrics to its run (``row["robustness"][attack]``); keep then-prune rows as
    rows of their own (the unlearn-then-prune check), drop the other attacked copies from the row list."""
    by_name = {r["name"]: r for r in rows if not r.get("attack_of")}
    out = []
    for r in rows:
        target = by_name.get(r.get("attack_of"))
        if target is not None:
            entry = {"skipped": r["skipped"]} if r.get("skipped") else dict(r["metrics"])
            target.setdefault("robustness", {})[r["attack"]] = entry
        if not r.get("attack_of") or r.get("unlearn_then_prune"):
            out.append(r)
    return out


__all__ = ["RELEARN_FILE", "ROBUSTNESS_KEYS", "SKIPPED_FILE", "attacks_of", "check", "evaluation_settings", "fold_attacks",
           "markdown_section", "matched_runs", "plot_robustness", "robustness_table"]
