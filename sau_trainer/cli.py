"""The `sau-trainer` command: argument parsing only; each subcommand lives beside the library code it calls.

A subcommand module defines ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import import_module

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("sau_trainer.pruning.cli", "Prune a causal LM (magnitude, wanda, sparsegpt; unstructured or N:M)."),
    "eval": ("sau_trainer.evaluation.cli", "Evaluate a model on a benchmark (TOFU, MUSE, ...) and write results.json."),
    "run": ("sau_trainer.pipeline.cli", "Run a recipe: train, prune, unlearn, evaluate, report, push."),
    "push": ("sau_trainer.hub", "Push a saved sparse model with its sparsity metadata and model card to the Hub."),
}


LOG_LEVEL_HELP = "Python logging level: DEBUG, INFO (the default), WARNING or ERROR."


def _log_level(text: str) -> str:
    level = str(text).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a logging level; use DEBUG, INFO, WARNING or ERROR")
    return level


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sau-trainer", description="Sparsity-Aware Unlearning for pruned LLMs.")
    parser.add_argument("--version", action="version", version=f"sau-trainer {__version__}")
    parser.add_argument("--log-level", default="INFO", type=_log_level, help=LOG_LEVEL_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # import only the module that will run: none for the top-level --help (it lists names only), all for
    # build_parser() without argv (every option, e.g. for the documentation)
    wanted = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if wanted == name or argv is None:
            try:
                mod = import_module(module)
            except ImportError:
                continue
            mod.add_arguments(p)
            # accepted after the subcommand too; SUPPRESS keeps the top-level value when it is not given here
            p.add_argument("--log-level", default=argparse.SUPPRESS, type=_log_level, help=LOG_LEVEL_HELP)
            p.set_defaults(func=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the Hub library writes its lines with a handler of its own: passed on to ours as well, each came out twice
    logging.getLogger("huggingface_hub").propagate = False
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .progress import quiet_unless_terminal

    quiet_unless_terminal()  # bars written to a log file are one line per update
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under accelerate launch: said once, by the main process
            print(_interrupted(args.command, argv), file=sys.stderr)
        return 130  # the shell's status for a process ended by SIGINT
    finally:
        _close_process_group()


def _interrupted(command: str, argv: list[str]) -> str:
    """One line for Ctrl-C: for `run`, that finished stages are kept and the same command resumes."""
    import shlex

    again = "sau-trainer " + " ".join(shlex.quote(a) for a in argv)
    if command == "run":
        return (f"sau-trainer run: interrupted; finished stages are kept. To resume, re-run the same command: "
                f"{again}")
    return f"sau-trainer {command}: interrupted. To start it again, re-run: {again}"


def _close_process_group() -> None:
    """Under `accelerate launch`, end the process group cleanly: gloo aborts a process that exits with it open."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
