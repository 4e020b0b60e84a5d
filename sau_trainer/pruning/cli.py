"""``sau-trainer prune``: prune a local (or cached) Hugging Face causal LM and save it sparse.

The lead's `sau_trainer.cli` calls `add_arguments` and `main`; ``python -m sau_trainer.pruning.cli``
runs it on its own.
"""

from __future__ import annotations

import argparse
import logging
import os

from ..clitools import finite_float, positive_int
from .registry import PRUNERS

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``prune`` subcommand."""
    parser.add_argument("--model", required=True, help="model directory or Hub id (must be available offline)")
    parser.add_argument("--method", required=True, metavar="METHOD",
                        help=f"pruning method: a key of PRUNERS ({', '.join(sorted(PRUNERS))}, or one a --plugin "
                             "registers)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import this Python file or module first (repeatable): its register_pruner entries "
                             "are then valid --method names (as a recipe's plugins:)")
    parser.add_argument("--sparsity", type=finite_float, default=None,
                        help="fraction of each matrix set to zero, in [0, 1) (default 0.5; implied by --structure N:M)")
    parser.add_argument("--structure", default="unstructured",
                        help="'unstructured' or N:M, e.g. 2:4 (at most N survivors in every M inputs)")
    parser.add_argument("--calibration", default=None,
                        help="calibration texts for wanda/sparsegpt: a .txt (one sample per line), .jsonl/.json "
                             "file, or a local dataset directory")
    parser.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    parser.add_argument("--split", default=None, help="split of a saved DatasetDict (default: train)")
    parser.add_argument("--num-samples", type=int, default=128, help="calibration samples (default 128)")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration sample (default 2048)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration/evaluation batch size (default 8)")
    parser.add_argument("--device", default=None, help="device for the model, e.g. cuda (default: cpu)")
    parser.add_argument("--offload", action="store_true",
                        help="keep the model on the CPU and move one decoder layer at a time to --device")
    parser.add_argument("--dtype", default="auto", choices=_DTYPES, help="dtype to load the model in")
    parser.add_argument("--output-dir", "--output", dest="output_dir", required=True, help="where to save")
    parser.add_argument("--force", action="store_true", help="write into a non-empty output directory")
    parser.add_argument("--eval-ppl", default=None, metavar="TEXT_FILE_OR_DIR",
                        help="print perplexity on these texts before and after pruning")
    parser.add_argument("--eval-seq-len", type=int, default=None, help="window length for --eval-ppl")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: 1 for a model under 50M parameters, where more "
                             "threads only wait on each other, else torch's default)")


def main(args: argparse.Namespace) -> int:
    """Run the ``prune`` subcommand; returns the exit status (2 on bad input, with the reason on stderr)."""
    from ..clitools import CommandError, report_error

    try:
        return _run(args)
    except (CommandError, ValueError, FileNotFoundError, FileExistsError) as err:
        return report_error("prune", err)


def _check(args: argparse.Namespace) -> None:
    """Every cheap check, before anything loads; all the problems found are named together."""
    from ..clitools import CommandError, device_problem, model_problem, output_dir_problem
    from ..plugins import load_plugins
    from .nm import parse_structure, resolve_sparsity

    problems = load_plugins(getattr(args, "plugin", None) or [])
    if args.method not in PRUNERS:
        problems.append(f"--method {args.method!r} is not a registered pruner; choose one of {sorted(PRUNERS)} "
                        "(or pass --plugin FILE that registers it).")
    out = args.output_dir
    bad_out = output_dir_problem(out)
    if bad_out:
        problems.append(bad_out)
    elif os.path.isdir(out) and os.listdir(out) and not args.force:
        problems.append(f"--output-dir {out}: not empty; pass --force to write into it anyway.")
    bad_model = model_problem(args.model)
    if bad_model:
        problems.append(bad_model)
    bad_device = device_problem(args.device)
    if bad_device:
        problems.append(bad_device)
    try:
        resolve_sparsity(args.sparsity, parse_structure(args.structure))
    except ValueError as err:
        problems.append(str(err))
    if args.method in PRUNERS and PRUNERS[args.method].statistic is not None and args.calibration is None:
        problems.append(f"--method {args.method} needs --calibration (a text/jsonl file or a dataset directory).")
    for flag, path in (("--calibration", args.calibration), ("--eval-ppl", args.eval_ppl)):
        if path is not None and not os.path.exists(path):
            problems.append(f"{flag} {path}: no such file or directory (a local text/jsonl/json file or a "
                            "dataset directory; nothing is downloaded).")
    if problems:
        raise CommandError(" ".join(p if p.endswith(".") else p + "." for p in problems))


def _run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from ..clitools import CommandError, cached_snapshot, load_problem, set_threads
    from ..modeling import CheckpointError, load_causal_lm
    from .api import prune_model, save_sparse_model
    from .perplexity import perplexity
    from .textfiles import load_texts

    _check(args)  # nothing is loaded if the arguments are wrong
    out = args.output_dir
    calibration = None
    if args.calibration is not None:
        calibration = load_texts(args.calibration, args.text_field, args.split)
    eval_texts = load_texts(args.eval_ppl, args.text_field, args.split) if args.eval_ppl else None

    local = os.path.isdir(os.path.expanduser(args.model))
    set_threads(args.threads, os.path.expanduser(args.model) if local else None)
    source = cached_snapshot(args.model) or args.model  # a cached Hub id without a Hub: its folder, no requests
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
        model = load_causal_lm(source, dtype=dtype)
        model.config._name_or_path = args.model  # the id, not the cache folder
    except CheckpointError as err:  # a pickle checkpoint torch's safe loader refuses
        raise CommandError(str(err)) from None
    except OSError as err:
        raise CommandError(load_problem(args.model, err)) from err
    if args.device is not None and not args.offload:
        model.to(args.device)

    def ppl():
        return perplexity(model, eval_texts, tokenizer, seq_len=args.eval_seq_len, batch_size=args.batch_size)

    before = ppl() if eval_texts is not None else None
    result = prune_model(
        model, args.method, args.sparsity, args.structure, calibration=calibration, tokenizer=tokenizer,
        num_samples=args.num_samples, seq_len=args.seq_len, batch_size=args.batch_size,
        device=args.device if args.offload else None,
        progress=not args.no_progress, text_field=args.text_field, calibration_source=args.calibration,
    )
    save_sparse_model(model, tokenizer, out, result)
    print(f"{args.method} {result.structure}: sparsity {result.sparsity:.4f} over {len(result.masks)} matrices "
          f"in {result.elapsed_s:.1f} s; saved to {out}")
    if eval_texts is not None:
        after = ppl()
        print(f"perplexity on {args.eval_ppl}: {before:.4f} dense -> {after:.4f} pruned")
    return 0


def _standalone(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sau-trainer prune", description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_standalone())
