"""The `sau-trainer` command: argument parsing only; each subcommand lives beside the library code it calls.

A subcommand module defines ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

# bitsandbytes warns at import, on CPUs with AVX512-BF16, that an optional 4-bit kernel package is missing;
# this package never uses 4-bit kernels, so the command line keeps that line out of its output.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("sau_trainer.pruning.cli", "Prune a causal LM (magnitude, wanda, sparsegpt; unstructured or N:M)."),
    "eval": ("sau_trainer.evaluation.cli", "Evaluate a model on a benchmark (TOFU, MUSE, ...) and write results.json."),
    "run": ("sau_trainer.pipeline.cli", "Run a recipe: train, prune, unlearn, evaluate, report, push."),
    "push": ("sau_trainer.hub", "Push a saved sparse model with its sparsity metadata and model card to the Hub."),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="sau-trainer", description="Sparsity-Aware Unlearning for pruned LLMs.")
    parser.add_argument("--version", action="version", version=f"sau-trainer {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if wanted in (None, name):  # import only the module that will run (help lists all)
            try:
                mod = import_module(module)
            except ImportError:
                continue
            mod.add_arguments(p)
            p.set_defaults(func=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Under `accelerate launch`, end the process group cleanly: gloo aborts a process that exits with it open."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
