"""``sau-trainer eval``: evaluate a saved model on a registered benchmark and write ``results.json``.

A re-run with the same settings (same model files, data, forget split, generation length)
reuses the file and says so; different settings recompute. A new retain-results file only
recomputes the metrics measured against it (forget quality on TOFU, privleak wherever membership
inference ran), from the per-example numbers already saved, and only from a reference evaluated on
the same rows.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
from pathlib import Path
from typing import Any

from ..clitools import CommandError, positive_int, report_error
from .compat import COMPAT_MODES, QUESTION_KEYS, resolve

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sau-trainer eval``."""
    from ..benchmarks.registry import BENCHMARKS
    from ..benchmarks.tofu.data import FORGET_SPLITS

    parser.add_argument("--model", required=True, help="Directory of a saved causal LM and its tokenizer.")
    parser.add_argument("--benchmark", default="synthetic", metavar="NAME",
                        help="; ".join(f"{name}: {b.help}" for name, b in BENCHMARKS.items()) + " (default synthetic); "
                        "or one a --plugin registers.")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import this Python file or module first (repeatable): its register_benchmark entries "
                             "are then valid --benchmark names (as a recipe's plugins:)")
    parser.add_argument("--subset", default=None,
                        help="Subset of a benchmark that has them (muse: news, the default, or books; wmdp: cyber, the "
                        "default, bio or chem).")
    presets = sorted({p for b in BENCHMARKS.values() for p in b.presets})
    parser.add_argument("--preset", default="tiny", choices=presets, help="Size of a built-in benchmark.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of a built-in benchmark.")
    parser.add_argument("--forget-split", default="forget10", choices=FORGET_SPLITS,
                        help="The split the model unlearned: its questions are scored as the forget set (forget "
                        "quality, forget ROUGE; default forget10). TOFU-style benchmarks only (MUSE forgets "
                        "raw/forget).")
    parser.add_argument("--data-dir", default=None,
                        help="Local copy instead of the Hub: TOFU split files (<split>.json/.jsonl/.parquet), or "
                        "MUSE's layout (<config>/<split>-00000-of-00001.parquet or .json/.jsonl), or for wmdp the folders "
                        "wmdp/, mmlu/, wmdp-corpora/ in that layout.")
    parser.add_argument("--retain-results", default=None,
                        help="The retain model's results.json (or its directory), for forget quality.")
    parser.add_argument("--output-dir", "--output", dest="output_dir", required=True,
                        help="Where results.json is written.")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="Rows per forward pass and per generation batch (default 16; lower it if memory runs "
                        "out).")
    parser.add_argument("--max-new-tokens", type=positive_int, default=200,
                        help="TOFU-protocol generation length (default 200, the TOFU paper's; MUSE fixes 128 for "
                        "VerbMem and 32 for KnowMem).")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="Weights' dtype once loaded (default auto: the dtype the model was saved in).")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--force", action="store_true", help="Recompute even if results with the same settings exist.")
    parser.add_argument("--max-rows", type=positive_int, default=None,
                        help="MUSE-protocol benchmarks: score only the first N rows of each scored split (verbmem, "
                        "knowmem questions, privleak forget and holdout; the in-context examples stay whole), e.g. "
                        "for a quick look. Recorded in results.json (settings.max_rows, rows); a retain reference "
                        "must be evaluated on the same rows.")
    parser.add_argument("--max-prompt-tokens", type=positive_int, default=None,
                        help="MUSE-protocol benchmarks: cut the VerbMem and KnowMem prompts to BOS and their last N-1 "
                        "tokens, for a model whose positions the prompts would fill (MUSE-News' VerbMem prompts are "
                        "about 1,300 tokens): without it such a model is refused, since it would generate nothing. "
                        "Recorded in results.json (settings.max_prompt_tokens).")
    parser.add_argument("--compat", default=None, choices=list(COMPAT_MODES),
                        help="Metric definitions of another code base, to put numbers beside its published tables: "
                        "'open-unlearning' (TOFU: its truth ratio and extraction strength) or 'muse' (MUSE's own "
                        "VerbMem and zlib). Default: the package's definitions. Recorded in results.json.")
    parser.add_argument("--question-key", default="question", choices=QUESTION_KEYS,
                        help="TOFU protocol: the column the forget and retain questions are asked from "
                        "('paraphrased_question' asks them in paraphrased form).")
    parser.add_argument("--no-progress", action="store_true",
                        help="Hide progress bars (MUSE then logs one line per split: rows and seconds).")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: 1 for a model under 50M parameters, where more threads "
                        "only wait on each other, else torch's default).")


def _settings(args: argparse.Namespace, splits: dict, model_dir: Path) -> dict[str, Any]:
    from ..benchmarks.registry import get_benchmark
    from ..data.qa import PLAIN_PROMPT
    from .results import RESULTS_VERSION, data_fingerprint, model_fingerprint

    bench = get_benchmark(args.benchmark)
    synthetic = bench.generated and args.data_dir is None
    out = {
        "results_version": RESULTS_VERSION,
        "benchmark": args.benchmark,
        "preset": args.preset if synthetic else None,
        "seed": args.seed if synthetic else None,
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        "forget_split": args.forget_split,
        "data_fingerprint": data_fingerprint(splits),
        "model_dir": str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir),
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
        "plain_prompt": PLAIN_PROMPT,
    }
    out.update(protocol=bench.protocol, subset=args.subset, membership_inference=1)
    for key in ("max_rows", "max_prompt_tokens", "compat"):  # only when set: earlier results files stay reusable
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    if args.question_key != "question":
        out["question_key"] = args.question_key
    return out


def _model_info(model: Any, model_dir: Path) -> dict[str, Any]:

    from ..pruning import measured_sparsity

    n_params = sum(p.numel() for p in model.parameters())
    return {
        "path": str(model_dir),
        "name_or_path": getattr(model.config, "_name_or_path", None),
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "num_parameters": n_params,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "sparsity": measured_sparsity(model),  # exact zeros over the prunable matrices
    }


def _print_summary(results: dict, path: Path) -> None:
    summary = results["summary"]
    width = max(len(k) for k in summary)
    lines = [f"  {k:<{width}}  {'null' if v is None else f'{v:.4g}'}" for k, v in summary.items()]
    settings = results["settings"]
    what = "TOFU" if settings.get("protocol", "tofu") == "tofu" else settings.get("benchmark", "MUSE")
    where = settings.get("forget_split") if settings.get("protocol", "tofu") == "tofu" else settings.get("subset")
    if settings.get("max_rows") is not None:
        where = f"{where or 'default subset'}; first {settings['max_rows']} rows per split"
    print(f"{what} results ({where}) -> {path}\n" + "\n".join(lines))


def recomputed_names(results: dict) -> str:
    """What a new reference changes in `results`: forget quality (TOFU protocol) and privleak (wherever
    membership inference ran)."""
    from .results import has_truth_ratios

    names = (["forget quality"] if has_truth_ratios(results) else []) + (
        ["privleak"] if "mia_min_k" in (results.get("summary") or {}) else [])
    return " and ".join(names) or "nothing (no metric is measured against a reference)"


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def main(args: argparse.Namespace) -> int:
    """Runs the evaluation (or reuses a results file with the same settings hash); 2 with one line on bad input."""
    try:
        return _run(args)
    except CommandError as err:
        return report_error("eval", err)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmarks.registry import get_benchmark
    from ..clitools import device_problem, output_dir_problem, set_threads
    from .results import (
        RESULTS_FILENAME,
        attach_forget_quality,
        build_results,
        load_results,
        save_results,
        settings_hash,
    )

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_dir = Path(args.model).expanduser().resolve()
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append(f"--model {args.model}: " + ("no such directory" if not model_dir.exists() else
                        "not a directory" if not model_dir.is_dir() else "the directory has no config.json")
                        + "; give a saved model directory.")
    bad_out = output_dir_problem(args.output_dir)
    if bad_out:
        problems.append(bad_out)
    if args.retain_results is not None and not Path(args.retain_results).exists():
        problems.append(f"--retain-results {args.retain_results}: no such file or directory; give the retain "
                        "model's results.json or its directory.")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        problems.append(f"--data-dir {args.data_dir}: no such directory.")
    bad_device = device_problem(args.device)
    if bad_device:
        problems.append(bad_device)
    from ..benchmarks.registry import BENCHMARKS
    from ..plugins import load_plugins

    problems += load_plugins(getattr(args, "plugin", None) or [])  # before the name is checked: they register names
    if args.benchmark not in BENCHMARKS:
        close = difflib.get_close_matches(args.benchmark, list(BENCHMARKS), n=1)
        problems.append(f"--benchmark {args.benchmark!r} is not a registered benchmark; "
                        + (f"did you mean {close[0]!r}? " if close else "") + f"choose one of {sorted(BENCHMARKS)} "
                        "(or pass --plugin FILE that registers it).")
        raise CommandError(" ".join(problems))
    bench = get_benchmark(args.benchmark)
    bench_problems = bench.check_options(args.subset, args.preset)
    if bench_problems:
        problems.append(f"--benchmark {args.benchmark}: " + "; ".join(bench_problems) + ".")
    limits = [f"--{k.replace('_', '-')}" for k in ("max_rows", "max_prompt_tokens") if getattr(args, k, None)]
    if limits and bench.protocol != "muse":
        problems.append(f"{' and '.join(limits)}: for MUSE-protocol benchmarks (muse, synthetic-muse); "
                        f"{args.benchmark} follows the {bench.protocol.upper()} protocol.")
    try:
        resolve(args.compat, bench.protocol)
    except ValueError as err:
        problems.append(f"--compat: {err}")
    if args.question_key != "question" and bench.protocol != "tofu":
        problems.append(f"--question-key {args.question_key}: for TOFU-protocol benchmarks; {args.benchmark} "
                        f"follows the {bench.protocol.upper()} protocol and asks its own prompts.")
    if problems:
        raise CommandError(" ".join(problems))
    set_threads(args.threads, model_dir)
    try:
        splits = _load_splits(args, bench)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        raise CommandError(f"--benchmark {args.benchmark}: cannot load its data: {err}") from err
    settings = _settings(args, splits, model_dir)
    digest = settings_hash(settings)
    output_dir = Path(args.output_dir)
    path = output_dir / RESULTS_FILENAME

    if path.is_file() and not args.force:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
            logger.warning("%s is not valid JSON; recomputing.", path)
        if old.get("settings_hash") == digest and old.get("settings") == settings:
            ref_old = (old.get("forget_quality_reference") or {}).get("digest")
            ref_new = None if args.retain_results is None else _reference_digest(args.retain_results)
            if ref_old == ref_new:  # the same reference, or none on both sides
                logger.info("Reusing %s: it was computed with the same settings (hash %s). Pass --force to "
                            "recompute.", path, digest)
                _print_summary(old, path)
                return 0
            from .reference_rows import mia_row_counts, reference_row_problem

            try:
                problem = reference_row_problem(mia_row_counts(old), args.retain_results)
            except (OSError, ValueError) as err:
                raise CommandError(f"--retain-results {args.retain_results}: {err}") from err
            if problem:
                raise CommandError(f"--retain-results {args.retain_results}: {problem}")
            logger.info("Reusing the per-example numbers in %s (same settings, hash %s); recomputing %s against %s.",
                        path, digest, recomputed_names(old), args.retain_results or "no reference (null)")
            results = attach_forget_quality(load_results(old), args.retain_results)
            path = save_results(results, output_dir)
            _print_summary(results, path)
            return 0
        if old:
            logger.info("%s was computed with other settings (%s changed); recomputing.",
                        path, ", ".join(_changed(old.get("settings") or {}, settings)) or "format")

    from transformers import AutoTokenizer

    from ..modeling import CheckpointError, load_causal_lm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    logger.info("Evaluating %s on %s (%s; device %s).", model_dir, args.benchmark,
                args.forget_split if bench.protocol == "tofu" else args.subset or bench.default_subset or "", device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load_causal_lm(str(model_dir), dtype=dtype).to(device)
    except CheckpointError as err:  # a pickle checkpoint torch's safe loader refuses
        raise CommandError(str(err)) from None
    except (OSError, ValueError) as err:  # no tokenizer saved, a broken config, an unknown architecture
        from ..clitools import load_problem

        raise CommandError(load_problem(args.model, err)) from err
    from ..benchmarks.muse.evaluation import MuseInputError

    limits = {k: getattr(args, k) for k in ("max_rows", "max_prompt_tokens") if getattr(args, k, None) is not None}
    try:
        evaluation = bench.evaluate(model, tokenizer, splits, **bench.data_options(args),
                                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                    retain_results=args.retain_results, show_progress=not args.no_progress,
                                    compat=args.compat, question_key=args.question_key, **limits)
    except MuseInputError as err:  # said before any model work: nothing is lost
        raise CommandError(str(err)) from err
    results = build_results(evaluation, _model_info(model, model_dir), settings)
    if "rows" in evaluation:  # rows evaluated per split, of how many (with --max-rows, fewer than all)
        results["rows"] = evaluation["rows"]
    path = save_results(results, output_dir)
    _print_summary(results, path)
    return 0


def _load_splits(args: argparse.Namespace, bench: Any) -> dict:
    """The benchmark's evaluation splits. For TOFU-style ones the holdout split (the membership-inference
    non-members) is optional: without it the attacks are skipped, with a log line."""
    from ..benchmarks.registry import load_benchmark

    names = list(bench.evaluation_splits(subset=args.subset, **bench.data_options(args)))
    kwargs = dict(data_dir=args.data_dir, preset=args.preset, seed=args.seed, subset=args.subset)
    if bench.protocol != "tofu":
        return load_benchmark(args.benchmark, splits=names, **kwargs)
    holdout = names.pop()
    splits = load_benchmark(args.benchmark, splits=names, **kwargs)
    try:
        splits.update(load_benchmark(args.benchmark, splits=[holdout], **kwargs))
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        logger.warning("No %s split (%s): membership inference is skipped.", holdout, err)
    return splits


def _reference_digest(retain_results: str) -> str:
    from .results import reference_info

    return reference_info(retain_results)["digest"]
