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
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...evaluation import metrics
from .data import encode_completion, validate_muse_split

logger = logging.getLogger("sau_trainer.evaluation.muse")  # its name before the move

VERBMEM_MAX_NEW_TOKENS = 128
KNOWMEM_MAX_NEW_TOKENS = 32
KNOWMEM_MAX_PROMPT_TOKENS = 512
KNOWMEM_STOP_STRINGS = ("\n\n", "\nQuestion", "Question:")
PRIVLEAK_MAX_TOKENS = 2048
VERBMEM_MAX_TOKENS = 2048
SCORED_SPLITS = ("verbmem/forget", "knowmem/forget_qa", "knowmem/retain_qa", "privleak/forget", "privleak/holdout")


class MuseInputError(ValueError):
    """The MUSE evaluation cannot give meaningful numbers for these inputs (said before any model work)."""


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


def _prompts(tokenizer: Any, texts: Sequence[str], max_tokens: int | None) -> tuple[list[list[int]], list[int]]:
    """`encode_generation_prompt` of each text, and each prompt's length before the cut."""
    full = [_bos(tokenizer) + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    cut = [ids if max_tokens is None or len(ids) <= max_tokens else ids[:len(_bos(tokenizer))] +
           ids[len(ids) - (max_tokens - len(_bos(tokenizer))):] for ids in full]
    return cut, [len(ids) for ids in full]


def check_room(split: str, prompts: Sequence[Sequence[int]], lengths: Sequence[int], max_length: int | None,
               max_new_tokens: int) -> None:
    """Refuses (`MuseInputError`) prompts that fill the model's `max_length` positions: greedy generation would
    add no token and the row would score 0, whatever the model knows. Names the fix: a model with enough
    positions for the longest prompt and `max_new_tokens`, or ``max_prompt_tokens`` (keep each prompt's end)."""
    if max_length is None:
        return
    full = [n for p, n in zip(prompts, lengths, strict=True) if len(p) >= max_length]
    if not full:
        return
    fix = f"use a model with at least {max(lengths) + max_new_tokens} positions"
    n = max_length - max_new_tokens
    if n > 1:
        fix += (f", or cut each prompt to BOS and its last {n - 1} tokens with --max-prompt-tokens {n} "
                f"(max_prompt_tokens={n}; a recipe: evaluate.max_prompt_tokens)")
    raise MuseInputError(
        f"MUSE {split}: {len(full)} of {len(prompts)} prompts are {min(full)}-{max(full)} tokens, which fill the "
        f"model's {max_length} positions: greedy generation would add nothing and score 0. To evaluate, {fix}.")


class _SplitLog:
    """One log line per split (rows, seconds) when progress bars are off: a long evaluation into a log file
    says what it has done, not only its first and last line."""

    def __init__(self, enabled: bool, counts: Mapping[str, Mapping[str, int]]):
        self.enabled, self.counts, self.start = enabled, counts, time.perf_counter()
        if enabled:
            logger.info("MUSE evaluation: %s.", ", ".join(f"{s} {c['evaluated']} rows" for s, c in counts.items()))

    def done(self, splits: Sequence[str], what: str, t0: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rows = " + ".join(str(self.counts[s]["evaluated"]) for s in splits)
        of = " + ".join(str(self.counts[s]["of"]) for s in splits)
        logger.info("MUSE %s: %s of %s rows (%s) in %.1f s (%.1f s so far).", " + ".join(splits), rows, of, what,
                    now - t0, now - self.start)


def encode_privleak_texts(tokenizer: Any, rows: Sequence[Mapping[str, str]], split: str, max_tokens: int | None,
                          count: Any = None, keep_text: bool = False) -> list[dict]:
    """The privleak texts with BOS, cut to `max_tokens` (each cut row counted in `count`, a `TruncationCount`,
    with its length before the cut). `keep_text`: each row also carries its full text as ``zlib_text``, for the
    zlib attack on the untruncated text (MUSE's own code)."""
    out = []
    for r in rows:
        enc = encode_completion(tokenizer, "", r["text"])
        n = len(enc["input_ids"])
        if count is not None:
            count.add(split, 0 if max_tokens is None else n - max_tokens, length=n)
        if max_tokens is not None:
            enc = {k: v[:max_tokens] for k, v in enc.items()}
        if keep_text:
            enc["zlib_text"] = r["text"]
        out.append(enc)
    return out


# MUSE-News' VerbMem prompts are about 1,290 tokens with Llama-2's tokenizer (more with a small trained one).
REAL_VERBMEM_PROMPT_TOKENS = 1290


def check_recipe(recipe: Any, errors: list[str]) -> None:
    """Recipe checks of the MUSE evaluation (called by the schema), one line each: ``evaluate.max_prompt_tokens``
    is positive and MUSE-only, and a model built from ``model.shape`` whose positions the real MUSE's VerbMem
    prompts fill (the built-in ``tiny`` has 256) is refused with the fix, before anything is trained."""
    from ...modeling import MODEL_SHAPES
    from ..registry import get_benchmark

    e, m = recipe.evaluate, recipe.model
    try:
        bench = get_benchmark(recipe.data.benchmark)
    except (KeyError, ValueError):  # an unknown benchmark has its own error
        return
    n = getattr(e, "max_prompt_tokens", None)
    if n is not None and (not isinstance(n, int) or n < 1 or bench.protocol != "muse"):
        errors.append(f"evaluate.max_prompt_tokens: {n!r}: a positive number of tokens, for MUSE-protocol benchmarks "
                      f"only ({recipe.data.benchmark} is {bench.protocol.upper()})")
    if bench.protocol != "muse" or bench.generated or m.shape is None or n is not None:
        return
    shape = MODEL_SHAPES.get(m.shape, {}) if isinstance(m.shape, str) else m.shape
    positions = shape.get("max_position_embeddings", 2048) if isinstance(shape, Mapping) else None
    needed = REAL_VERBMEM_PROMPT_TOKENS + VERBMEM_MAX_NEW_TOKENS
    if isinstance(positions, int) and positions < needed:
        errors.append(
            f"model.shape: {positions} positions: MUSE's VerbMem prompts are about {REAL_VERBMEM_PROMPT_TOKENS} tokens "
            f"(Llama-2's tokenizer; more with a small trained one) and {VERBMEM_MAX_NEW_TOKENS} are generated after "
            f"them, so this model would generate nothing and VerbMem would score 0. Use a model with at least "
            f"{needed} positions (model.name_or_path, or max_position_embeddings in a model.shape dict), or set "
            f"evaluate.max_prompt_tokens (e.g. {max(positions - VERBMEM_MAX_NEW_TOKENS, 1)}: each prompt's end)")


def _mean(values: Sequence[float | None]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else 0.0


def evaluate_muse(model: Any, tokenizer: Any, benchmark_splits: Mapping[str, Any], batch_size: int = 8,
                  retain_results: Mapping | str | Path | None = None, max_length: int | None = None,
                  show_progress: bool = True, reference_model: Any = None, gradnorm: bool = True,
                  verbmem_max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS,
                  knowmem_max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS, compat: str | None = None,
                  max_rows: int | None = None, max_prompt_tokens: int | None = None) -> dict[str, Any]:
    """The MUSE protocol on `model` (see the module docstring): ``{"summary", "per_example", "protocol"}``.

    `benchmark_splits` maps ``"<config>/<split>"`` names to rows and must hold ``verbmem/forget``,
    ``knowmem/{forget,retain}_qa(_icl)``, ``privleak/forget`` and ``privleak/holdout``. `retain_results`
    (the retain model's evaluation, a dict or a results.json path) is the privleak reference; without it
    the reference AUC is 0.5. `reference_model` adds the ``mia_reference`` attack. `max_length` caps every
    input (default: the model's limit). `compat`: the metric definitions (None: open-unlearning's; ``"muse"``:
    MUSE's own code; see the module docstring), recorded in the result.

    `max_rows` scores the first rows of each scored split only (`SCORED_SPLITS`; the in-context examples stay
    whole); the result's ``rows`` says how many of how many each split had. `max_prompt_tokens` cuts the VerbMem
    and KnowMem prompts to BOS and their last tokens (KnowMem's own cap is 512), for a model whose positions the
    prompts would fill: such prompts are refused (`MuseInputError`, before any model work), since greedy
    generation would add nothing and score 0. Texts cut to the privleak length are logged (how many, from what
    length), and with progress bars off each split gets a log line with its rows and time.
    """
    from ...data.truncation import TruncationCount
    from ...evaluation.compat import resolve
    from ...evaluation.generation import generate_from_ids
    from ...evaluation.mia import membership_inference
    from ...evaluation.reference_rows import reference_row_problem
    from ...evaluation.results import attach_forget_quality
    from ...progress import show_progress as show_bar
    from ..tofu.evaluation import model_max_length

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    defs = resolve(compat, "muse")
    for name, value in (("max_rows", max_rows), ("max_prompt_tokens", max_prompt_tokens)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise MuseInputError(f"{name} must be a positive integer or None, got {value!r}.")
    limit = model_max_length(model, tokenizer)
    max_length = limit if max_length is None else (max_length if limit is None else min(max_length, limit))

    def cap(n: int) -> int:
        return n if max_length is None else min(n, max_length)

    def prompt_cap(n: int) -> int:
        return cap(n if max_prompt_tokens is None else min(n, max_prompt_tokens))

    # Every split first, then the reference and the prompts' lengths: a problem is said before any model work.
    counts: dict[str, dict[str, int]] = {}

    def scored(name: str) -> list[dict]:
        rows = _rows(benchmark_splits, name)
        kept = rows if max_rows is None else rows[:max_rows]
        counts[name] = {"evaluated": len(kept), "of": len(rows)}
        return kept

    verbmem = scored("verbmem/forget")
    knowmem = {part: (_rows(benchmark_splits, f"knowmem/{part}_qa_icl"), scored(f"knowmem/{part}_qa"))
               for part in ("forget", "retain")}
    privleak_rows = {part: scored(f"privleak/{part}") for part in ("forget", "holdout")}
    problem = reference_row_problem((counts["privleak/forget"]["evaluated"], counts["privleak/holdout"]["evaluated"]),
                                    retain_results)
    if problem:
        raise MuseInputError(problem[0].upper() + problem[1:])
    prompts, lengths = _prompts(tokenizer, [r["prompt"] for r in verbmem], prompt_cap(VERBMEM_MAX_TOKENS))
    check_room("verbmem/forget", prompts, lengths, max_length, verbmem_max_new_tokens)
    knowmem_prompts = {}
    for part, (icl, qa) in knowmem.items():
        knowmem_prompts[part], n = _prompts(tokenizer, [knowmem_prompt(icl, r["question"]) for r in qa],
                                            prompt_cap(KNOWMEM_MAX_PROMPT_TOKENS))
        check_room(f"knowmem/{part}_qa", knowmem_prompts[part], n, max_length, knowmem_max_new_tokens)
    splits_log = _SplitLog(not show_bar(show_progress), counts)
    summary: dict[str, Any] = {}
    per_example: dict[str, Any] = {}

    # VerbMem: greedy continuations of the forget excerpts.
    t0 = time.perf_counter()
    gens = generate_from_ids(model, tokenizer, prompts, verbmem_max_new_tokens, batch_size, max_length,
                             show_progress=show_progress, desc="MUSE verbmem")
    truth = [verbmem_reference(tokenizer, r["gt"], defs.verbmem_reference_tokens) for r in verbmem]
    rouge = metrics.rouge_l_f1(gens, truth, stemmer=defs.verbmem_stemmer)
    per_example["verbmem_forget"] = {"prompt": [r["prompt"] for r in verbmem], "generation": gens,
                                     "rouge_l_f1": rouge}
    summary["forget_verbmem_rouge"] = _mean(rouge)
    splits_log.done(["verbmem/forget"], f"greedy continuations of up to {verbmem_max_new_tokens} tokens", t0)

    # KnowMem on the forget and the retain questions.
    for part in ("forget", "retain"):
        t0 = time.perf_counter()
        qa = knowmem[part][1]
        prompts = knowmem_prompts[part]
        gens = generate_from_ids(model, tokenizer, prompts, knowmem_max_new_tokens, batch_size, max_length,
                                 stop_strings=KNOWMEM_STOP_STRINGS, show_progress=show_progress,
                                 desc=f"MUSE knowmem {part}")
        rouge = metrics.rouge_l_f1(gens, [r["answer"] for r in qa])
        per_example[f"knowmem_{part}"] = {"question": [r["question"] for r in qa], "generation": gens,
                                          "rouge_l_f1": rouge}
        summary[f"{part}_knowmem_rouge"] = _mean(rouge)
        splits_log.done([f"knowmem/{part}_qa"], f"greedy answers of up to {knowmem_max_new_tokens} tokens", t0)

    # Membership inference: privleak forget texts (members) against holdout texts (non-members), cut to the
    # privleak length (counted and logged: the protocol's own cut at INFO, a lower model limit as a warning).
    # MUSE's own zlib compresses the full text (compat muse): the rows then carry it as zlib_text.
    t0 = time.perf_counter()
    privleak_limit = cap(PRIVLEAK_MAX_TOKENS)
    texts_cut = TruncationCount("MUSE privleak texts", privleak_limit)
    members, others = (encode_privleak_texts(tokenizer, privleak_rows[part], f"privleak/{part}", privleak_limit,
                                             texts_cut, keep_text=defs.zlib_full_text)
                       for part in ("forget", "holdout"))
    texts_cut.log(logger, logging.INFO if privleak_limit == PRIVLEAK_MAX_TOKENS else logging.WARNING)
    mia = membership_inference(model, tokenizer, members, others, batch_size=batch_size, gradnorm=gradnorm,
                               reference_model=reference_model, show_progress=show_progress)
    summary.update(mia["summary"])
    per_example["mia"] = mia["per_example"]
    splits_log.done(["privleak/forget", "privleak/holdout"], "membership inference", t0)

    # Exact memorisation and extraction strength on the verbmem items, teacher-forced.
    from ...evaluation.mia import sequence_scores

    t0 = time.perf_counter()
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
    splits_log.done(["verbmem/forget"], "teacher-forced exact memorisation and extraction strength", t0)

    for key, value in summary.items():
        if not math.isfinite(value):  # pragma: no cover - the metrics are NaN-free by construction
            raise RuntimeError(f"Metric {key} is {value}.")
    evaluation = {"summary": summary, "per_example": per_example, "protocol": "muse", "forget_split": "raw/forget",
                  "mia_k": mia["k"], "compat": compat, "rows": counts, "max_rows": max_rows,
                  "max_prompt_tokens": max_prompt_tokens}
    return attach_forget_quality(evaluation, retain_results)
