"""``sau-trainer run RECIPE.yaml [--output-dir DIR] [--force] [--tasks GLOB] [--dry-run] [key.path=value ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

OVERRIDE_HELP = ("overrides, KEY.PATH=VALUE with a YAML value: unlearn.learning_rate=2e-4, "
                 "unlearn.objective=[npo], prune.enabled=false")


class _IntermixedParser(argparse.ArgumentParser):
    """Lets overrides follow options (``run R.yaml --output-dir D a.b=1``): plain argparse would stop at
    the first option and reject the later positionals."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``run`` subcommand."""
    from ..clitools import positive_float, positive_int

    parser.__class__ = _IntermixedParser
    parser.add_argument("recipe", help="recipe YAML file (see recipes/demo.yaml)")
    # default=[]: without it the intermixed parsing lists the optional overrides as required when none is given
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[], help=OVERRIDE_HELP)
    parser.add_argument("--output-dir", "--output", dest="output_dir", default=None,
                        help="output directory (default: the recipe's output_dir, else outputs/<name>)")
    parser.add_argument("--force", action="store_true", help="redo every stage, even those already finished")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the stages, run nothing")
    parser.add_argument("--accelerate-config", default=None, metavar="YAML",
                        help="--dry-run: estimate memory for this accelerate config (processes, FSDP, DeepSpeed "
                        "ZeRO); default: the current accelerate launch, else one process")
    parser.add_argument("--num-processes", type=positive_int, default=None, metavar="N",
                        help="--dry-run: the number of processes (overrides the accelerate config's)")
    parser.add_argument("--device-memory", type=positive_float, default=None, metavar="GIB",
                        help="--dry-run: the memory of one device in GiB to check the estimate against "
                        "(default: CUDA device 0, else the host's RAM)")
    parser.add_argument("--tasks", action="append", metavar="GLOB", default=None,
                        help="run only the tasks whose names (as --dry-run lists them) match GLOB (fnmatch; "
                        "repeat it or separate patterns by commas), with the unfinished tasks they depend on; "
                        "several such runs may share one output directory at the same time (a task is run by "
                        "one of them, the others reuse it), e.g. --tasks 'models/*-s1'")


def main(args: argparse.Namespace) -> int:
    """Validate the recipe (nothing runs if it is wrong), then run it; 2 on a bad recipe, 1 on a failed stage."""
    from .runner import StageFailed, run_recipe
    from .schema import RecipeError, load_recipe

    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(f"sau-trainer run: error: {err}", file=sys.stderr)
        return 2
    output_dir = Path(args.output_dir or recipe.output_dir or Path("outputs") / recipe.name)
    from ..clitools import output_dir_problem

    bad_output = output_dir_problem(output_dir, "--output-dir" if args.output_dir else "output_dir")
    if bad_output:
        print(f"sau-trainer run: error: {bad_output}", file=sys.stderr)
        return 2
    bad_models = [] if args.dry_run else _hub_model_problems(recipe)
    if bad_models:
        print(f"sau-trainer run: error: {' '.join(bad_models)}", file=sys.stderr)
        return 2
    if any(getattr(recipe, sec).args.get("disable_tqdm") for sec in ("train_target", "train_retain", "unlearn")):
        from ..progress import disable_bars

        disable_bars()  # the recipe turned the training bars off: weight loading, pruning, evaluation follow
    try:
        if args.dry_run:
            return _dry_run(recipe, output_dir, args)
        summary = run_recipe(recipe, output_dir, force=args.force, tasks=args.tasks)
    except RecipeError as err:
        print(f"sau-trainer run: error: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:
        print(f"sau-trainer run: error: {err}", file=sys.stderr)
        return 1
    logger.info("done: %d stages run, %d cached%s; report: %s", len(summary.ran), len(summary.skipped),
                f", {len(summary.not_selected)} not selected by --tasks" if summary.not_selected else "",
                output_dir / "report.md")
    return 0


def _hub_model_problems(recipe) -> list[str]:
    """The Hub ids the recipe names that cannot be had (not cached, and the Hub offline, unreachable or without
    them), found before any stage runs: one line, not a stage failing after a minute of retried requests."""
    import os

    from ..clitools import _looks_like_path, model_problem

    named = [("model.name_or_path", recipe.model.name_or_path), ("model.tokenizer", recipe.model.tokenizer)]
    named += [(f"{sec}.model", getattr(recipe, sec).model) for sec in ("train_target", "train_retain")
              if not getattr(recipe, sec).enabled]
    problems = []
    for flag, name in named:
        if name and not os.path.exists(os.path.expanduser(name)) and not _looks_like_path(name):
            problem = model_problem(name, flag)
            if problem:
                problems.append(problem)
    return problems


def _dry_run(recipe, output_dir: Path, args=None) -> int:
    from .runner import hash_tasks, is_diverged, is_done, parse_patterns, select_tasks
    from .schema import RecipeError
    from .stages import STAGES, plan

    try:
        tasks = plan(recipe)
        known = True
    except RecipeError as err:  # the data is not here (offline, no data_dir): list the stages all the same
        if not str(err).startswith("data:"):
            raise
        print(f"note: {err}\nnote: without the data the stages are listed, but whether they are cached is "
              "unknown", file=sys.stderr)
        tasks = plan(recipe, lambda: {})
        known = False
    hash_tasks(tasks)
    patterns = parse_patterns(getattr(args, "tasks", None))
    selected = select_tasks(tasks, patterns) if patterns else {t.name for t in tasks}
    for t in tasks:
        if t.name not in selected:
            continue
        folder = output_dir / "stages" / t.name
        cached = known and STAGES[t.kind].cached
        if cached and is_diverged(folder, t):  # recorded as diverged: a run does not retry it (--force does)
            status = "diverged"
        else:
            status = "cached" if cached and is_done(folder, t, record=False) else "to run"
        print(f"{status:7s} {t.kind:9s} {t.name}")
    return _print_memory(recipe, [t for t in tasks if t.name in selected], args, planned=tasks)


def _print_memory(recipe, tasks, args, planned=None) -> int:
    """The dry run's memory estimate per stage (pipeline/memory.py) and a warning for each that cannot fit."""
    from . import memory

    config = getattr(args, "accelerate_config", None)
    nproc = getattr(args, "num_processes", None)
    try:
        if config:
            dist = memory.distributed_from_accelerate_config(config, nproc)
        else:
            dist = memory.distributed_from_env() or memory.Distributed()
            if nproc:
                dist = memory.Distributed(nproc, dist.kind if dist.kind != "single" else "ddp", dist.fsdp_version,
                                          dist.reshard_after_forward, dist.zero_stage, dist.offload_params,
                                          dist.offload_optimizer, dist.source)
    except Exception as err:  # noqa: BLE001 - a missing or malformed file: one line, no traceback
        print(f"sau-trainer run: error: --accelerate-config {config}: could not read it as an accelerate config "
              f"({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    device = memory.device_memory()
    if getattr(args, "device_memory", None):
        device = (int(args.device_memory * memory.GiB), f"a device of {args.device_memory:g} GiB (--device-memory)")
    lines, warnings = memory.memory_report(recipe, tasks, dist, device, planned=planned)
    print()
    print("\n".join(lines))
    for w in warnings:
        print(w)
    return 0
