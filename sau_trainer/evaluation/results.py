"""The ``results.json`` file: summary, per-example numbers, model, settings and their hash.

The per-example truth ratios are kept so that forget quality can be computed later
against any other model's file (the retain model, dense or pruned the same way), without
running either model again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import metrics

logger = logging.getLogger(__name__)

RESULTS_FORMAT = "sau-trainer/tofu-results"
RESULTS_VERSION = 1
RESULTS_FILENAME = "results.json"
SUMMARY_ORDER = (
    "forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio", "forget_probability",
    "forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge", "privleak",
    "extraction_strength", *metrics.MODEL_UTILITY_COMPONENTS,
)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A stable hash of the settings that produced a results file (key order does not matter) and of the metric
    definitions' version (`compat.DEFINITIONS_VERSION`): a file computed with older definitions is never reused."""
    from . import compat

    return _digest({"settings": dict(settings), "definitions_version": compat.DEFINITIONS_VERSION})[:16]


def data_fingerprint(splits: Mapping[str, list[dict]]) -> str:
    """A hash of the benchmark rows themselves, so changed data never reuses old results."""
    return _digest({k: list(v) for k, v in splits.items()})[:16]


def model_fingerprint(model_dir: str | Path) -> str:
    """A hash of the names, sizes and modification times of the files in a model directory."""
    root = Path(model_dir)
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file())
    if not entries:
        raise FileNotFoundError(f"{root} holds no files: not a saved model directory.")
    return _digest(entries)[:16]


def load_results(source: Mapping | str | Path) -> dict[str, Any]:
    """A results dict from a dict, a ``results.json`` path or the directory holding it, checked."""
    if isinstance(source, Mapping):
        results, where = dict(source), "results"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / RESULTS_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"No results file at {path}.")
        results, where = json.loads(path.read_text()), str(path)
    version = results.get("version", RESULTS_VERSION)
    if results.get("format", RESULTS_FORMAT) != RESULTS_FORMAT or version > RESULTS_VERSION:
        raise ValueError(f"{where}: not a {RESULTS_FORMAT} file of version <= {RESULTS_VERSION}.")
    if not isinstance(results.get("summary"), Mapping) or not isinstance(results.get("per_example"), Mapping):
        raise ValueError(f"{where}: no summary and per_example: not an evaluation's results.")
    if isinstance(source, str | Path):
        results.setdefault("path", str(Path(where).resolve()))
    return results


def forget_quality_from_results(results: Mapping, retain_results: Mapping | str | Path,
                                compat: str | None = None) -> float:
    """KS p-value between two evaluations' forget-set truth ratios; they must cover the same questions.

    The definition is that of `compat`, else of the `results`' own ``compat``: compat ``open-unlearning``
    recomputes both models' ratios from their stored NLLs as open-unlearning does (`metrics.forget_quality_ou`),
    whatever definitions the retain results were computed with."""
    mine = load_results(results)
    ref = load_results(retain_results)
    for doc, name in ((mine, "these results"), (ref, ref.get("path", "the retain results"))):
        if not has_truth_ratios(doc):
            raise ValueError(f"{name}: no per_example.forget.log_truth_ratio to compute forget quality from "
                             "(forget quality is a TOFU-protocol metric).")
    if mine.get("forget_split") and ref.get("forget_split") and mine["forget_split"] != ref["forget_split"]:
        raise ValueError(f"Forget quality compares the same forget split: {mine['forget_split']} vs "
                         f"{ref['forget_split']} in {ref.get('path', 'the retain results')}.")
    q_mine = mine["per_example"]["forget"].get("question")
    q_ref = ref["per_example"]["forget"].get("question")
    if q_mine is not None and q_ref is not None and q_mine != q_ref:
        raise ValueError(f"The retain results ({ref.get('path', 'given')}) were computed on other forget "
                         "questions (another benchmark, preset or seed?).")
    from .compat import resolve

    if resolve(compat if compat is not None else mine.get("compat")).truth_ratio_eps:
        ratios = [metrics.truth_ratio_ou(d["per_example"]["forget"]["nll_reference"],
                                         d["per_example"]["forget"]["nll_perturbed"]) for d in (mine, ref)]
        return metrics.forget_quality_ou(*ratios)
    return metrics.forget_quality(mine["per_example"]["forget"]["log_truth_ratio"],
                                  ref["per_example"]["forget"]["log_truth_ratio"])


def has_truth_ratios(results: Mapping) -> bool:
    """Whether `results` has the per-example forget truth ratios that forget quality needs (TOFU protocol)."""
    try:
        results["per_example"]["forget"]["log_truth_ratio"]
    except (KeyError, TypeError):
        return False
    return True


def privleak_from_results(results: Mapping, retain_results: Mapping | str | Path | None) -> tuple[float, float | None]:
    """(privleak, the retain AUC it used) from the ``mia_min_k`` AUCs of two evaluations; without retain
    results (or when they have no ``mia_min_k``) the retain AUC is open-unlearning's fallback 0.5 (None)."""
    from .mia import DEFAULT_RETAIN_AUC, privleak

    auc = results["summary"]["mia_min_k"]
    auc_ret = None
    if retain_results is not None:
        ref = load_results(retain_results)
        auc_ret = ref["summary"].get("mia_min_k")
        if auc_ret is None:
            logger.warning("The retain results (%s) have no mia_min_k; privleak uses the fallback AUC %.1f.",
                           ref.get("path", "given"), DEFAULT_RETAIN_AUC)
    return privleak(auc, DEFAULT_RETAIN_AUC if auc_ret is None else auc_ret), auc_ret


def reference_metrics(results: Mapping, retain_results: Mapping | str | Path) -> dict[str, float]:
    """The metrics that compare a model with a retain model: forget quality (TOFU protocol) and privleak
    (wherever membership inference ran)."""
    out: dict[str, float] = {}
    if has_truth_ratios(results):
        out["forget_quality"] = forget_quality_from_results(results, retain_results)
    if "mia_min_k" in results.get("summary", {}):
        out["privleak"] = privleak_from_results(results, retain_results)[0]
    return out


def reference_info(retain_results: Mapping | str | Path) -> dict[str, Any]:
    ref = load_results(retain_results)
    model = ref.get("model")
    keyed = ref["per_example"]["forget"]["log_truth_ratio"] if has_truth_ratios(ref) else None
    if "mia_min_k" in ref["summary"]:
        keyed = {"log_truth_ratio": keyed, "mia_min_k": ref["summary"]["mia_min_k"]} if keyed is not None \
            else {"mia_min_k": ref["summary"]["mia_min_k"]}
    return {
        "path": ref.get("path"),
        "settings_hash": ref.get("settings_hash"),
        "model": model.get("path") if isinstance(model, Mapping) else model,
        "digest": _digest(keyed)[:16],
    }


def ordered_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary with the headline numbers first."""
    out = {k: summary[k] for k in SUMMARY_ORDER if k in summary}
    out.update({k: v for k, v in summary.items() if k not in out})
    return out


def attach_forget_quality(results: Mapping, retain_results: Mapping | str | Path | None) -> dict[str, Any]:
    """A copy of `results` with the metrics measured against the retain model: ``summary.forget_quality``
    (TOFU protocol; None, with a log line, without a reference) and ``summary.privleak`` (wherever
    membership inference ran; against AUC 0.5 without a reference, as open-unlearning does)."""
    out = copy.deepcopy(dict(results))
    summary = dict(out["summary"])
    tofu = has_truth_ratios(out)
    if retain_results is None:
        if tofu:
            logger.info("Forget quality is null: no retain-model results were given (pass the retain model's "
                        "results.json as --retain-results / retain_results=).")
            summary["forget_quality"] = None
        out["forget_quality_reference"] = None
    else:
        if tofu:
            summary["forget_quality"] = forget_quality_from_results(out, retain_results)
        out["forget_quality_reference"] = reference_info(retain_results)
    if "mia_min_k" in summary:
        summary["privleak"], auc_ret = privleak_from_results({"summary": summary}, retain_results)
        out["privleak_retain_auc"] = auc_ret
    out["summary"] = ordered_summary(summary)
    return out


def build_results(evaluation: Mapping, model: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The full results document: format, version, summary, the metric definitions used (``compat``,
    ``definitions``, ``definitions_version``), model, settings, settings_hash, per_example."""
    from .compat import DEFINITIONS_VERSION, definitions_label

    return {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "summary": ordered_summary(evaluation["summary"]),
        "forget_split": evaluation.get("forget_split"),
        "protocol": evaluation.get("protocol", "tofu"),
        "compat": evaluation.get("compat"),
        "definitions": definitions_label(evaluation.get("compat")),
        "definitions_version": DEFINITIONS_VERSION,
        **({"question_key": evaluation["question_key"]} if evaluation.get("question_key", "question") != "question"
           else {}),
        "forget_quality_reference": evaluation.get("forget_quality_reference"),
        "privleak_retain_auc": evaluation.get("privleak_retain_auc"),
        "model": dict(model),
        "settings": dict(settings),
        "settings_hash": settings_hash(settings),
        "per_example": evaluation["per_example"],
    }


def save_results(results: Mapping, output_dir: str | Path) -> Path:
    """Writes ``output_dir/results.json`` atomically (a crash never leaves half a file to reuse)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILENAME
    doc = {k: v for k, v in results.items() if k != "path"}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
