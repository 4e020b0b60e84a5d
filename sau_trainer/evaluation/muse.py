"""The MUSE evaluation (Shi et al. 2024, arXiv 2407.06460), as open-unlearning runs it (METHODS.md section 3.3).

- ``forget_verbmem_rouge``: BOS + the ``verbmem/forget`` prompt, up to 128 greedy new tokens, ROUGE-L F1
  against the full ground-truth continuation.
- ``forget_knowmem_rouge`` / ``retain_knowmem_rouge``: the in-context pairs of ``knowmem/*_qa_icl`` as
  ``"Question: {q}\\nAnswer: {a}\\n\\n"``, then ``"Question: {q}\\nAnswer: "``; BOS; at most 512 tokens;
  up to 32 greedy new tokens cut at ``"\\n\\n"``, ``"\\nQuestion"`` and ``"Question:"``; ROUGE-L F1
  against the answer.
- Membership inference on ``privleak/forget`` (members) against ``privleak/holdout`` (texts with BOS,
  at most 2,048 tokens): ``mia_*`` AUCs, and ``privleak`` against the retain model's ``mia_min_k``.
- ``exact_memorization`` and ``extraction_strength`` (open-unlearning's variant) teacher-forced on the
  verbmem items (prompt, then a space and the ground truth; only the ground truth is scored).

Differences from the original MUSE code (as in open-unlearning): ROUGE with stemming; the verbmem
ground truth is not cut to 128 tokens; privleak uses texts cut to 2,048 tokens. ``compat="muse"``
(`sau_trainer.evaluation.compat`) follows MUSE's own code for VerbMem (ROUGE-L F1 without stemming against
the ground truth's first 128 tokens, BOS counted) and for zlib (the compressed length of the full text). A knowmem prompt longer
than 512 tokens keeps BOS and its last 511 tokens (its question), where open-unlearning would cut the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.muse import encode_completion, validate_muse_split
from . import metrics

logger = logging.getLogger(__name__)

VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32
KNOWMEM_MAX_PROMPT_TOKENS = 512
KNOWMEM_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
PRIVLEAK_MAX_TOKENS = 2048
VERBMEM_MAX_TOKENS = 2048


def knowmem_prompt(icl: Sequence[Mapping[str, str]], question: str) -> str:
    """The few-shot prompt for `question`: every in-context pair, then the question (no BOS: added as a token)."""
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
    return f"{shots}Question: {question}\nAnswer: "


def _bos(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None else []


def encode_generation_prompt(tokenizer: Any, text: str, max_tokens: int | None = None) -> list[int]:
    """BOS + the tokens of `text`; longer than `max_tokens`: BOS and the last tokens (the end is what is asked)."""
    bos = _bos(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None and len(bos) + len(ids) > max_tokens:
        ids = ids[len(ids) - (max_tokens - len(bos)):]
    return bos + ids


def verbmem_reference(tokenizer: Any, gt: str, max_tokens: int | None = None) -> str:
    """The VerbMem ground truth scored against: the continuation, stripped; with `max_tokens` (compat ``muse``)
    MUSE's own: tokenised with the special tokens (BOS counted), cut to its first `max_tokens` ids, decoded
    without them."""
    if max_tokens is None:
        return gt.strip()
    ids = tokenizer(gt, add_special_tokens=True)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _rows(splits: Mapping[str, Any], name: str) -> list[dict]:
    if name not in splits:
        raise KeyError(f"The benchmark has no split {name!r}, needed for the MUSE evaluation; it has {sorted(splits)}.")
    rows = splits[name]
    rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
    return validate_muse_split(rows, name, f"benchmark split {name!r}")


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else 0.0


def evaluate_muse(model: Any, tokenizer: Any, benchmark_splits: Mapping[str, Any], batch_size: int = 8,
                  retain_results: Mapping | str | Path | None = None, max_length: int | None = None,
                  show_progress: bool = True, reference_model: Any = None, gradnorm: bool = True,
                  verbmem_max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS,
                  knowmem_max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS, compat: str | None = None) -> dict[str, Any]:
    """The MUSE protocol on `model` (see the module docstring): ``{"summary", "per_example", "protocol"}``.

    `benchmark_splits` maps ``"<config>/<split>"`` names to rows and must hold ``verbmem/forget``,
    ``knowmem/{forget,retain}_qa(_icl)``, ``privleak/forget`` and ``privleak/holdout``. `retain_results`
    (the retain model's evaluation, a dict or a results.json path) is the privleak reference; without it
    the reference AUC is 0.5. `reference_model` adds the ``mia_reference`` attack. `max_length` caps every
    input (default: the model's limit). `compat`: the metric definitions (None: open-unlearning's; ``"muse"``:
    MUSE's own code; see the module docstring), recorded in the result.
    """
    from .compat import resolve
    from .generation import generate_from_ids
    from .mia import membership_inference
    from .results import attach_forget_quality
    from .tofu import model_max_length

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    defs = resolve(compat, "muse")
    limit = model_max_length(model, tokenizer)
    max_length = limit if max_length is None else (max_length if limit is None else min(max_length, limit))

    def cap(n: int) -> int:
        return n if max_length is None else min(n, max_length)

    verbmem = _rows(benchmark_splits, "verbmem/forget")
    summary: dict[str, Any] = {}
    per_example: dict[str, Any] = {}

    # VerbMem: greedy continuations of the forget excerpts.
    prompts = [encode_generation_prompt(tokenizer, r["prompt"], cap(VERBMEM_MAX_TOKENS)) for r in verbmem]
    gens = generate_from_ids(model, tokenizer, prompts, verbmem_max_new_tokens, batch_size, max_length,
                             show_progress=show_progress, desc="MUSE verbmem")
    truth = [verbmem_reference(tokenizer, r["gt"], defs.verbmem_reference_tokens) for r in verbmem]
    rouge = metrics.rouge_l_f1(gens, truth, stemmer=defs.verbmem_stemmer)
    per_example["verbmem_forget"] = {"prompt": [r["prompt"] for r in verbmem], "generation": gens,
                                     "rouge_l_f1": rouge}
    summary["forget_verbmem_rouge"] = _mean(rouge)

    # KnowMem on the forget and the retain questions.
    for part in ("forget", "retain"):
        icl = _rows(benchmark_splits, f"knowmem/{part}_qa_icl")
        qa = _rows(benchmark_splits, f"knowmem/{part}_qa")
        prompts = [encode_generation_prompt(tokenizer, knowmem_prompt(icl, r["question"]),
                                            cap(KNOWMEM_MAX_PROMPT_TOKENS)) for r in qa]
        gens = generate_from_ids(model, tokenizer, prompts, knowmem_max_new_tokens, batch_size, max_length,
                                 stop_strings=KNOWMEM_STOP_STRINGS, show_progress=show_progress,
                                 desc=f"MUSE knowmem {part}")
        rouge = metrics.rouge_l_f1(gens, [r["answer"] for r in qa])
        per_example[f"knowmem_{part}"] = {"question": [r["question"] for r in qa], "generation": gens,
                                          "rouge_l_f1": rouge}
        summary[f"{part}_knowmem_rouge"] = _mean(rouge)

    # Membership inference: privleak forget texts (members) against holdout texts (non-members).
    def privleak_rows(split: str) -> list[dict]:  # MUSE's own zlib compresses the full text (compat muse)
        return [{**encode_completion(tokenizer, "", r["text"], cap(PRIVLEAK_MAX_TOKENS) - 1),
                 **({"zlib_text": r["text"]} if defs.zlib_full_text else {})}
                for r in _rows(benchmark_splits, split)]

    members = privleak_rows("privleak/forget")
    others = privleak_rows("privleak/holdout")
    mia = membership_inference(model, tokenizer, members, others, batch_size=batch_size, gradnorm=gradnorm,
                               reference_model=reference_model, show_progress=show_progress)
    summary.update(mia["summary"])
    per_example["mia"] = mia["per_example"]

    # Exact memorisation and extraction strength on the verbmem items, teacher-forced.
    from ..data.truncation import TruncationCount
    from .mia import sequence_scores

    encoded = []
    cut = TruncationCount("MUSE verbmem teacher-forced items", max_length)
    for r in verbmem:
        enc = encode_completion(tokenizer, r["prompt"], r["gt"], VERBMEM_MAX_TOKENS, insert_space=True)
        if max_length is not None:
            cut.add("verbmem/forget", len(enc["input_ids"]) - max_length)
            enc = {k: v[:max_length] for k, v in enc.items()}
        encoded.append(enc)
    cut.log(logger)
    tf = sequence_scores(model, tokenizer, encoded, batch_size, gradnorm=False, desc="MUSE verbmem teacher-forced",
                         show_progress=show_progress)
    per_example["verbmem_forget"]["exact_memorization"] = tf["exact_memorization"]
    per_example["verbmem_forget"]["extraction_strength"] = tf["extraction_strength"]
    summary["exact_memorization"] = _mean(tf["exact_memorization"])
    summary["extraction_strength"] = _mean(tf["extraction_strength"])

    for key, value in summary.items():
        if not math.isfinite(value):  # pragma: no cover - the metrics are NaN-free by construction
            raise RuntimeError(f"Metric {key} is {value}.")
    evaluation = {"summary": summary, "per_example": per_example, "protocol": "muse", "forget_split": "raw/forget",
                  "mia_k": mia["k"], "compat": compat}
    return attach_forget_quality(evaluation, retain_results)
