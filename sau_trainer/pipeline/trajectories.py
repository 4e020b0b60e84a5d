"""Evaluation during unlearning in the pipeline (``unlearn.eval_steps``): what enters the unlearn task, the
evaluation function given to `UnlearningEvaluationCallback`, and the trajectory file the report reads (SPEC 7).

Why. The report compares methods on frontiers over a utility band; a run that is evaluated during training gives
many (step, utility, forget metric) points instead of one, so which learning rates the grid holds matters less.

- **Settings.** Off by default (``unlearn.eval_steps: null``): then nothing changes in any task's settings, and
  existing caches keep their hashes. When set, each grid run's unlearn task gains ``trajectory`` (the schedule,
  the evaluation's rows and generation length, the evaluate section's settings and the metric-definitions version)
  and depends on ``eval/retain`` (forget quality needs the retain model's truth ratios), which is planned before
  the unlearning runs.
- **The evaluation.** The benchmark's own evaluation (`ctx.bench.evaluate`, as the evaluate stage runs it), on the
  benchmark with every split except the forget set's cut to ``unlearn.eval_rows`` rows (the forget set, its
  perturbed/paraphrased versions and the holdout stay whole: forget quality and the membership attacks are computed
  as in the final evaluation), generating ``unlearn.eval_max_new_tokens`` tokens (default
  ``evaluate.max_new_tokens``; TOFU's and MUSE's utility needs generated answers, so 0 is refused). Under the TOFU
  protocol the membership-inference attacks (about 40% of an evaluation's time on the study's pruned model,
  per-example gradient norms included) are left out unless ``unlearn.eval_membership_inference`` is true: no
  comparison reads them, and the final evaluation always runs them. MUSE's privleak is one of its metrics and stays.
- **Output.** ``trajectory.json`` in the unlearn task's directory: the list of evaluations (``step`` and the
  metrics), written by the main process; the report attaches it to the run's row as ``trajectory``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)

TRAJECTORY_FILE = "trajectory.json"
GENERATING_PROTOCOLS = ("tofu", "muse")  # their utility metric is computed on generated answers


def _eval_tokens(recipe) -> int:
    u = recipe.unlearn
    return recipe.evaluate.max_new_tokens if u.eval_max_new_tokens is None else u.eval_max_new_tokens


def check_recipe(recipe, errors: list[str]) -> None:
    """``unlearn.eval_steps``, ``eval_rows`` and ``eval_max_new_tokens`` (called by the schema)."""
    u = recipe.unlearn
    steps = u.eval_steps
    if steps is not None and not isinstance(steps, bool) and isinstance(steps, int | float):
        if not ((isinstance(steps, int) and steps >= 1) or 0 < steps < 1):
            errors.append(f"unlearn.eval_steps: give an integer >= 1 (optimizer steps) or a number in (0, 1) (that "
                          f"fraction of the run's steps), got {steps!r}; null turns the evaluation off")
    if isinstance(u.eval_rows, int) and u.eval_rows < 1:
        errors.append(f"unlearn.eval_rows: must be >= 1 (rows per split), got {u.eval_rows}; null: every row")
    if isinstance(u.eval_max_new_tokens, int) and u.eval_max_new_tokens < 0:
        errors.append(f"unlearn.eval_max_new_tokens: must be >= 0, got {u.eval_max_new_tokens}")
    if steps is None:
        return
    from ..benchmarks.registry import BENCHMARKS

    bench = BENCHMARKS.get(recipe.data.benchmark)
    tokens = _eval_tokens(recipe)
    if bench is not None and bench.protocol in GENERATING_PROTOCOLS and isinstance(tokens, int) and tokens == 0:
        errors.append("unlearn.eval_steps: the evaluations during unlearning generate no answers (unlearn."
                      "eval_max_new_tokens, else evaluate.max_new_tokens, is 0), so their utility is 0 and no "
                      "frontier reaches a band; set unlearn.eval_max_new_tokens > 0 (e.g. 16)")


def trajectory_settings(recipe) -> dict | None:
    """What the evaluation during unlearning depends on (added to each grid run's unlearn task), None when off."""
    u = recipe.unlearn
    if u.eval_steps is None:
        return None
    from ..evaluation.compat import DEFINITIONS_VERSION
    from .robustness import evaluation_settings

    return {"eval_steps": u.eval_steps, "max_new_tokens": _eval_tokens(recipe), "rows": u.eval_rows,
            "evaluate": evaluation_settings(recipe.evaluate), "definitions": DEFINITIONS_VERSION,
            "membership_inference": bool(u.eval_membership_inference)}


def retain_eval_first(tasks: list) -> None:
    """Move ``eval/retain`` before the first unlearn task (its own dependencies come earlier still), in place."""
    names = [t.name for t in tasks]
    if "eval/retain" not in names:
        return
    retain = tasks.pop(names.index("eval/retain"))
    first = next(i for i, t in enumerate(tasks) if t.kind == "unlearn")
    tasks.insert(first, retain)


def skips_membership_inference(bench, membership_inference: bool) -> bool:
    """Whether the evaluations during unlearning leave out the membership-inference attacks: only the TOFU protocol
    runs them as a part of its evaluation that can be turned off (MUSE's privleak is one of its own metrics)."""
    return bench.protocol == "tofu" and not membership_inference


def cut_benchmark(benchmark: dict, forget_split: str, rows: int | None) -> dict:
    """The benchmark with every split cut to its first `rows` rows, except the forget set's (names starting with the
    forget split, e.g. ``forget10_perturbed``) and the holdout (the membership attacks' non-members)."""
    if rows is None:
        return benchmark

    def keep(name: str) -> bool:
        return name.startswith(forget_split) or "forget" in name or "holdout" in name

    def head(split):
        return split[:rows] if isinstance(split, list) else split.select(range(min(rows, len(split))))

    return {k: v if keep(k) else head(v) for k, v in benchmark.items()}


def evaluation_callback(ctx, task, tokenizer):
    """The `UnlearningEvaluationCallback` of one unlearn task with ``trajectory`` settings."""
    from ..unlearning_eval import UnlearningEvaluationCallback

    t = task.settings["trajectory"]
    e = t["evaluate"]
    forget_split = ctx.recipe.data.forget_split
    data = cut_benchmark(ctx.benchmark, forget_split, t["rows"])
    retain = ctx.task_dir(task.dep("retain_eval")) if "retain_eval" in task.deps else None
    options = {"max_prompt_tokens": e["max_prompt_tokens"]} if e.get("max_prompt_tokens") else {}
    if skips_membership_inference(ctx.bench, t.get("membership_inference", True)):
        options["membership_inference"] = False

    def evaluate(model):
        return ctx.bench.evaluate(model, tokenizer, data, **ctx.bench.data_options(ctx.recipe.data),
                                  batch_size=e["batch_size"],
                                  max_new_tokens=t["max_new_tokens"], max_length=e["max_length"],
                                  retain_results=retain, show_progress=False, compat=e.get("compat"),
                                  question_key=e.get("question_key", "question"), **options)

    return UnlearningEvaluationCallback(evaluate, t["eval_steps"])


def write_trajectory(out: Path, trajectory: list[dict]) -> Path:
    """``out/trajectory.json`` (atomically); a value that is not finite is written as null (JSON has no NaN)."""
    path = Path(out) / TRAJECTORY_FILE
    tmp = path.with_name(f".{TRAJECTORY_FILE}.tmp")
    clean = [{k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in e.items()} for e in trajectory]
    tmp.write_text(json.dumps(clean, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def read_trajectory(task_dir: Path) -> list[dict] | None:
    """An unlearn task's trajectory, None without one (``eval_steps`` off, or a run from before)."""
    path = Path(task_dir) / TRAJECTORY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning("%s is unreadable (%s): the run's trajectory is left out of the report", path, err)
        return None
    return data if isinstance(data, list) else None


def trajectory_note(recipe) -> str | None:
    """The sentence report.md prints about the trajectory points (which evaluation they use), None when off."""
    u = recipe.unlearn
    if u.eval_steps is None:
        return None
    from ..benchmarks.registry import BENCHMARKS

    bench = BENCHMARKS.get(recipe.data.benchmark)
    skips = bench is not None and skips_membership_inference(bench, u.eval_membership_inference)
    every = (f"every {u.eval_steps} optimizer steps" if isinstance(u.eval_steps, int) else
             f"every {u.eval_steps:g} of each run's steps")
    rows = ("every row" if u.eval_rows is None else
            f"the first {u.eval_rows} rows of each split except the forget set's (kept whole)")
    return (f"The frontiers use the evaluations during unlearning (unlearn.eval_steps: step 0, {every} and the last "
            f"step), on {rows}, generating {_eval_tokens(recipe)} tokens"
            + (", without the membership-inference attacks" if skips else "")
            + "; the tables below show the final evaluations, which are not mixed into the frontiers (their utility "
            "may be computed on other rows).")


__all__ = ["TRAJECTORY_FILE", "check_recipe", "cut_benchmark", "evaluation_callback", "read_trajectory",
           "retain_eval_first", "skips_membership_inference", "trajectory_note", "trajectory_settings",
           "write_trajectory"]
