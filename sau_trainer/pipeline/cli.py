"""``sau-trainer run RECIPE.yaml [--output-dir DIR] [--force] [key.path=value ...]``."""

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
    parser.__class__ = _IntermixedParser
    parser.add_argument("recipe", help="recipe YAML file (see recipes/demo.yaml)")
    # default=[]: without it the intermixed parsing lists the optional overrides as required when none is given
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[], help=OVERRIDE_HELP)
    parser.add_argument("--output-dir", "--output", dest="output_dir", default=None,
                        help="output directory (default: the recipe's output_dir, else outputs/<name>)")
    parser.add_argument("--force", action="store_true", help="redo every stage, even those already finished")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the stages, run nothing")


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
    try:
        if args.dry_run:
            return _dry_run(recipe, output_dir)
        summary = run_recipe(recipe, output_dir, force=args.force)
    except RecipeError as err:
        print(f"sau-trainer run: error: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:
        print(f"sau-trainer run: error: {err}", file=sys.stderr)
        return 1
    logger.info("done: %d stages run, %d cached; report: %s", len(summary.ran), len(summary.skipped),
                output_dir / "report.md")
    return 0


def _dry_run(recipe, output_dir: Path) -> int:
    from .runner import hash_tasks, is_done
    from .stages import STAGES, plan

    tasks = plan(recipe)
    hash_tasks(tasks)
    for t in tasks:
        done = STAGES[t.kind].cached and is_done(output_dir / "stages" / t.name, t)
        print(f"{'cached' if done else 'to run':7s} {t.kind:9s} {t.name}")
    return 0
