"""The batched TOFU evaluator: runs the model, then hands numbers to the pure metrics.

Two passes over all four evaluation sets (forget, retain, real authors, world facts):
one teacher-forced pass for the NLL of every answer, paraphrased answer and perturbed
answer (right padding), and one greedy-generation pass (left padding) for ROUGE-L. Both
sort by length to cut padding and keep every input within the model's maximum length.
All tokenisation goes through `sau_trainer.data.qa`, the one owner of the prompt format.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...data.qa import QACollator, encode_prompt, encode_qa
from ...data.truncation import TruncationCount, model_positions
from ...evaluation import metrics
from ...evaluation.compat import resolve as resolve_compat
from ...evaluation.mia import drop_last
from ...progress import log_once
from ...progress import show_progress as show_bar
from .data import evaluation_splits, holdout_split, validate_split

logger = logging.getLogger("sau_trainer.evaluation.tofu")  # its name before the move

SET_NAMES = ("forget", "retain", "real_authors", "world_facts")
PARAPHRASED_SETS = ("forget", "retain")  # the others compare the answer itself with the perturbed ones


def model_max_length(model: Any, tokenizer: Any = None) -> int | None:
    """The longest sequence the model accepts: its position limit (and the tokenizer's, if set)."""
    return model_positions(model, tokenizer)


@contextmanager
def _eval_mode(model: Any):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _batches(order: Sequence[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def teacher_forced_stats(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                         max_length: int | None = None, show_progress: bool = True,
                         desc: str = "TOFU log-likelihoods", labels: Sequence[str] | None = None,
                         extraction_quirk: bool = False) -> dict[str, list[float]]:
    """Per pair (question, answer): mean answer-token NLL (answer + EOS) and extraction strength (on the answer
    tokens without the EOS position, as open-unlearning; `extraction_quirk`: its 1/|y| floor, see
    `metrics.extraction_strength`).

    Answers are cut to fit `max_length`; a pair whose prompt alone fills it scores NLL `MAX_NLL`. The cut
    pairs are logged in one line, per label of `labels` (one per pair, e.g. its split; default `desc`).
    """
    nll = [metrics.MAX_NLL] * len(pairs)
    es = [0.0] * len(pairs)
    encoded: dict[int, dict] = {}
    cut = TruncationCount(f"{desc}: question/answer pairs", max_length, unit="answer tokens cut")
    for i, (q, a) in enumerate(pairs):
        prompt = len(encode_prompt(tokenizer, q))
        if max_length is None or prompt < max_length:
            encoded[i] = encode_qa(tokenizer, q, a, max_length=max_length)
        if max_length is not None:
            full = prompt + len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1
            cut.add(labels[i] if labels is not None else "all", full - len(encoded[i]["input_ids"])
                    if i in encoded else full - prompt)
    if len(encoded) < len(pairs):
        logger.warning("%d of %d prompts fill the model's maximum length (%s); their answers score probability 0.",
                       len(pairs) - len(encoded), len(pairs), max_length)
    cut.log(logger)
    order = sorted(encoded, key=lambda i: len(encoded[i]["input_ids"]))
    collate = QACollator(tokenizer, padding_side="right")
    device = _device(model)
    n_bad = 0
    with _eval_mode(model):
        for idx in tqdm(list(_batches(order, batch_size)), desc=desc, disable=not show_bar(show_progress)):
            batch = collate([encoded[i] for i in idx])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            stats = metrics.answer_token_stats(logits, batch["labels"].to(device))
            raw = stats["nll_sum"].double() / stats["n_tokens"].clamp(min=1)
            n_bad += int((~torch.isfinite(raw)).sum())
            means = metrics.mean_nll(stats["nll_sum"].cpu(), stats["n_tokens"].cpu())
            strengths = metrics.extraction_strength(stats["correct"].cpu(), drop_last(stats["mask"].cpu()),
                                                    ou_quirk=extraction_quirk)
            for j, i in enumerate(idx):
                nll[i] = float(means[j])
                es[i] = float(strengths[j])
    if n_bad:
        logger.warning("%d of %d answers got a non-finite NLL (a broken model?); scored as probability 0.",
                       n_bad, len(encoded))
    return {"nll": nll, "extraction_strength": es}


def greedy_generate(model: Any, tokenizer: Any, questions: Sequence[str], batch_size: int = 16,
                    max_new_tokens: int = 200, max_length: int | None = None, show_progress: bool = True,
                    desc: str = "TOFU generation", labels: Sequence[str] | None = None) -> list[str]:
    """Greedy answers to `questions`, left-padded in batches, never longer than `max_length` in total."""
    from ...evaluation.generation import generate_from_ids

    prompts = [encode_prompt(tokenizer, q) for q in questions]
    return generate_from_ids(model, tokenizer, prompts, max_new_tokens, batch_size, max_length,
                             show_progress=show_progress, desc=desc, labels=labels)


def _tofu_membership(model: Any, tokenizer: Any, forget_rows: list[dict], holdout_rows: Any, holdout: str,
                     batch_size: int, max_length: int | None, show_progress: bool) -> dict[str, Any]:
    """The attacks on forget answers (members) against holdout answers (non-members), QA-encoded."""
    from ...evaluation import mia

    holdout_rows = validate_split(holdout_rows.to_list() if hasattr(holdout_rows, "to_list") else list(holdout_rows),
                                  holdout, f"benchmark split {holdout!r}")

    def encode(rows: list[dict], count: TruncationCount | None = None) -> list[dict]:
        out = [encode_qa(tokenizer, r["question"], r["answer"], max_length) for r in rows
               if max_length is None or len(encode_prompt(tokenizer, r["question"])) < max_length]
        if count is not None and max_length is not None:  # the forget pairs were counted with the others
            for r in rows:
                full = len(encode_prompt(tokenizer, r["question"])) + len(
                    tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) + 1
                count.add(holdout, full - max_length)
        return out

    cut = TruncationCount("Membership inference: question/answer pairs", max_length, unit="answer tokens cut")
    holdout_encoded = encode(holdout_rows, cut)
    cut.log(logger)
    result = mia.membership_inference(model, tokenizer, encode(forget_rows), holdout_encoded,
                                      batch_size=batch_size, show_progress=show_progress)
    em = [v for v in result["per_example"]["forget"]["exact_memorization"] if v is not None]
    result["summary"]["exact_memorization"] = sum(em) / len(em) if em else 0.0
    return result


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _truth_ratios(name: str, log_r: torch.Tensor, nll_reference: list[float], nll_perturbed: list[list[float]],
                  ou: bool) -> dict[str, float]:
    """The set's truth ratio (forget: closer to 1 is better; others: the truth preferred) and its ``prob_mean``
    aggregate, in log space or (`ou`) as open-unlearning computes them on probabilities."""
    if ou:
        r = metrics.truth_ratio_ou(nll_reference, nll_perturbed)
        value = metrics.truth_ratio_forget_ou(r) if name == "forget" else metrics.truth_ratio_retain_ou(r)
        prob_mean = metrics.truth_ratio_prob_mean_ou(nll_reference, nll_perturbed)
    else:
        value = metrics.truth_ratio_forget(log_r) if name == "forget" else metrics.truth_ratio_retain(log_r)
        prob_mean = metrics.truth_ratio_prob_mean(log_r)
    return {f"{name}_truth_ratio": value, f"{name}_truth_ratio_prob_mean": prob_mean}


def _set_rows(benchmark_splits: Mapping[str, Any], forget_split: str) -> dict[str, list[dict]]:
    out = {}
    for name, split in zip(SET_NAMES, evaluation_splits(forget_split), strict=True):
        if split not in benchmark_splits:
            raise KeyError(f"The benchmark has no split {split!r}, needed for {name} metrics; "
                           f"it has {sorted(benchmark_splits)}.")
        rows = benchmark_splits[split]
        rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
        out[name] = validate_split(rows, split, f"benchmark split {split!r}")
    return out


def evaluate_tofu(model: Any, tokenizer: Any, benchmark_splits: Mapping[str, Any], forget_split: str = "forget10",
                  batch_size: int = 16, max_new_tokens: int = 200, retain_results: Mapping | str | Path | None = None,
                  max_length: int | None = None, show_progress: bool = True,
                  membership_inference: bool = True, compat: str | None = None,
                  question_key: str = "question") -> dict[str, Any]:
    """The TOFU protocol on `model`: ``{"summary": {...}, "per_example": {set: {...}}, "forget_split": ...}``.

    `benchmark_splits` maps split names to rows (lists of dicts or `datasets.Dataset`s) and
    must hold ``{forget_split}_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``
    and ``world_facts_perturbed``. Forget quality is the KS p-value against `retain_results`
    (another evaluation's dict or results.json path); without it, it is None.

    When ``holdout{NN}`` is there too (and `membership_inference` is on), the membership-inference
    attacks compare the forget questions' answers (members) with the holdout ones (non-members):
    ``mia_loss``, ``mia_zlib``, ``mia_min_k``, ``mia_min_k_plus_plus``, ``mia_gradnorm`` (AUCs),
    ``exact_memorization`` of the forget answers, and ``privleak`` against the retain model's
    ``mia_min_k`` (0.5 without `retain_results`), as open-unlearning computes them (METHODS.md 2.1-2.3);
    ``mia_gradnorm_l1`` and ``mia_gradnorm_linf`` with the other norms.

    Beside the SPEC metrics, as open-unlearning reports them: ``{forget,retain}_paraphrased_rouge`` and
    ``{forget,retain}_perturbed_rouge`` (ROUGE-L recall of the generation against the paraphrased answer and,
    averaged, the perturbed ones), ``{set}_rouge1_recall`` and ``{set}_rouge_l_f1`` (against the answer) and
    ``{set}_truth_ratio_prob_mean`` (the ``prob_mean`` aggregator: mean of correct / (correct + wrong)).

    `compat` picks the metric definitions (`sau_trainer.evaluation.compat`): None, the package's, or
    ``"open-unlearning"``, which reproduces its truth ratio, normalised probability and extraction strength
    exactly; the result records it (``compat``, ``definitions``). `question_key` ``"paraphrased_question"``
    asks the forget and retain questions in their paraphrased form (open-unlearning's ``question_key``; real
    authors, world facts and the holdout have no paraphrase and keep theirs).
    """
    if batch_size < 1 or max_new_tokens < 0:
        raise ValueError(f"batch_size must be >= 1 and max_new_tokens >= 0 (got {batch_size}, {max_new_tokens}).")
    defs = resolve_compat(compat, "tofu")
    sets = _set_rows(benchmark_splits, forget_split)
    if question_key != "question":
        for name in PARAPHRASED_SETS:
            missing = [i for i, r in enumerate(sets[name]) if not isinstance(r.get(question_key), str)]
            if missing:
                raise ValueError(f"question_key={question_key!r}: {len(missing)} rows of the {name} split (first: row "
                                 f"{missing[0]}) have no such string column; TOFU's forget and retain "
                                 "*_perturbed splits have 'question' and 'paraphrased_question'.")
        sets = {name: [{**r, "question": r[question_key]} for r in rows] if name in PARAPHRASED_SETS else rows
                for name, rows in sets.items()}
    limit = model_max_length(model, tokenizer)
    max_length = limit if max_length is None else (max_length if limit is None else min(max_length, limit))

    # One teacher-forced pass over every (question, candidate answer) pair of every set.
    pairs: list[tuple[str, str]] = []
    slots: dict[str, dict[str, Any]] = {}
    for name, rows in sets.items():
        slot: dict[str, Any] = {"answer": [], "reference": [], "perturbed": []}
        for r in rows:
            slot["answer"].append(len(pairs))
            pairs.append((r["question"], r["answer"]))
            if name in PARAPHRASED_SETS:
                slot["reference"].append(len(pairs))
                pairs.append((r["question"], r["paraphrased_answer"]))
            else:
                slot["reference"].append(slot["answer"][-1])
            slot["perturbed"].append(list(range(len(pairs), len(pairs) + len(r["perturbed_answer"]))))
            pairs += [(r["question"], p) for p in r["perturbed_answer"]]
        slots[name] = slot
    split_of = dict(zip(SET_NAMES, evaluation_splits(forget_split), strict=True))  # truncation is logged per split
    pair_splits = [split_of[name] for name, slot in slots.items()
                   for _ in range(len(slot["answer"]) + sum(len(g) for g in slot["perturbed"])
                                  + (len(slot["answer"]) if name in PARAPHRASED_SETS else 0))]
    stats = teacher_forced_stats(model, tokenizer, pairs, batch_size, max_length, show_progress,
                                 desc="TOFU log-likelihoods", labels=pair_splits,
                                 extraction_quirk=defs.extraction_strength_quirk)
    questions = [r["question"] for rows in sets.values() for r in rows]
    generations = greedy_generate(model, tokenizer, questions, batch_size, max_new_tokens, max_length,
                                  show_progress, labels=[split_of[name] for name, rows in sets.items() for _ in rows])

    per_example: dict[str, dict[str, list]] = {}
    summary: dict[str, Any] = {}
    offset = 0
    for name, rows in sets.items():
        slot = slots[name]
        nll_answer = [stats["nll"][i] for i in slot["answer"]]
        nll_reference = [stats["nll"][i] for i in slot["reference"]]
        nll_perturbed = [[stats["nll"][i] for i in group] for group in slot["perturbed"]]
        gens = generations[offset : offset + len(rows)]
        offset += len(rows)
        if name in PARAPHRASED_SETS:
            prob = metrics.probability(nll_answer)
        else:
            prob = metrics.normalised_probability(nll_answer, nll_perturbed,
                                                  metrics.OU_EPS if defs.normalised_probability_eps else 0.0)
        log_r = metrics.log_truth_ratio(nll_reference, nll_perturbed)
        rouge = metrics.rouge_scores(gens, [r["answer"] for r in rows])
        per_example[name] = {
            "question": [r["question"] for r in rows],
            "nll_answer": nll_answer,
            "nll_reference": nll_reference,
            "nll_perturbed": nll_perturbed,
            "probability": prob.tolist(),
            "log_truth_ratio": log_r.tolist(),
            **rouge,
            "extraction_strength": [stats["extraction_strength"][i] for i in slot["answer"]],
            "generation": gens,
        }
        summary[f"{name}_probability"] = float(prob.mean())
        summary[f"{name}_rouge"] = _mean(rouge["rouge_l_recall"])
        summary.update(_truth_ratios(name, log_r, nll_reference, nll_perturbed, defs.truth_ratio_eps))
        summary[f"{name}_rouge1_recall"] = _mean(rouge["rouge1_recall"])
        summary[f"{name}_rouge_l_f1"] = _mean(rouge["rouge_l_f1"])
        if name in PARAPHRASED_SETS:  # open-unlearning's *_Q_A_PARA_ROUGE and *_Q_A_PERT_ROUGE (ROUGE-L recall)
            para = metrics.rouge_l_recall(gens, [r["paraphrased_answer"] for r in rows])
            flat = metrics.rouge_l_recall([g for g, r in zip(gens, rows, strict=True) for _ in r["perturbed_answer"]],
                                          [p for r in rows for p in r["perturbed_answer"]])
            pert, at = [], 0
            for r in rows:
                pert.append(_mean(flat[at:at + len(r["perturbed_answer"])]))
                at += len(r["perturbed_answer"])
            per_example[name].update(paraphrased_rouge_l_recall=para, perturbed_rouge_l_recall=pert)
            summary[f"{name}_paraphrased_rouge"] = _mean(para)
            summary[f"{name}_perturbed_rouge"] = _mean(pert)
    summary["extraction_strength"] = sum(per_example["forget"]["extraction_strength"]) / len(sets["forget"])
    summary["model_utility"] = metrics.model_utility(summary)
    holdout = holdout_split(forget_split)
    if membership_inference and holdout in benchmark_splits:
        mia = _tofu_membership(model, tokenizer, sets["forget"], benchmark_splits[holdout], holdout, batch_size,
                               max_length, show_progress)  # sets["forget"] asks question_key's questions
        summary.update(mia["summary"])
        per_example["mia"] = mia["per_example"]
    elif membership_inference:
        log_once(logger, logging.INFO, "No %s split: membership inference (mia_*, privleak, exact_memorization) is "
                 "skipped.", holdout, key=("no-holdout", holdout))
    for key, value in summary.items():
        if not math.isfinite(value):  # pragma: no cover - the metrics are NaN-free by construction
            raise RuntimeError(f"Metric {key} is {value}.")

    evaluation = {"summary": summary, "per_example": per_example, "forget_split": forget_split,
                  "compat": compat, "question_key": question_key}
    from ...evaluation.results import attach_forget_quality

    return attach_forget_quality(evaluation, retain_results)
