"""TOFU metrics as pure functions (SPEC section 5, following open-unlearning's definitions).

Inputs are per-example mean answer-token NLLs (natural log) or per-token argmax
correctness; outputs are tensors or floats. Everything is computed in log space in
float64, so probabilities that underflow to 0 after aggressive unlearning never turn into
NaN: an NLL that is NaN or infinite is treated as `MAX_NLL` (probability 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import torch

from ..data.qa import IGNORE_INDEX

MAX_NLL = 1.0e4  # nats per token; exp(-MAX_NLL) == 0.0 in float64, but differences stay finite

Floats = torch.Tensor | Sequence[float]
Ragged = torch.Tensor | Sequence[Sequence[float]]


def clean_nll(nll: Floats) -> torch.Tensor:
    """NLLs as float64, with NaN/inf mapped to `MAX_NLL` and values clamped to [0, MAX_NLL]."""
    x = torch.as_tensor(nll, dtype=torch.float64)
    x = torch.nan_to_num(x, nan=MAX_NLL, posinf=MAX_NLL, neginf=0.0)
    return x.clamp(0.0, MAX_NLL)


def _ragged(nll: Ragged) -> tuple[torch.Tensor, torch.Tensor]:
    """A [N, K] float64 tensor of cleaned NLLs and a mask of which entries exist (rows may differ in K)."""
    if isinstance(nll, torch.Tensor):
        x = clean_nll(nll)
        if x.dim() != 2:
            raise ValueError(f"Expected a [N, K] tensor of perturbed NLLs, got shape {tuple(x.shape)}.")
        return x, torch.ones_like(x, dtype=torch.bool)
    rows = [list(r) for r in nll]
    k = max((len(r) for r in rows), default=0)
    if any(len(r) == 0 for r in rows):
        raise ValueError("Every example needs at least one perturbed answer.")
    values = torch.zeros(len(rows), k, dtype=torch.float64)
    mask = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, r in enumerate(rows):
        values[i, : len(r)] = clean_nll(r)
        mask[i, : len(r)] = True
    return values, mask


def answer_token_stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher-forced per-sequence NLL sum, token count and argmax correctness on the labelled tokens.

    `logits` [B, T, V] and `labels` [B, T] are unshifted (as a causal LM's forward gives them);
    returns ``nll_sum`` [B], ``n_tokens`` [B], ``correct`` and ``mask`` [B, T-1] (float32 math).
    """
    from ..objectives.losses import sequence_nll  # the one definition of the answer NLL

    nll_sum, n_tokens = sequence_nll(logits, labels)
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    correct = (logits[:, :-1].argmax(-1) == shift_labels) & mask
    return {"nll_sum": nll_sum, "n_tokens": n_tokens, "correct": correct, "mask": mask}


def mean_nll(nll_sum: Floats, n_tokens: Floats) -> torch.Tensor:
    """Length-normalised NLL; a sequence without labelled tokens gets `MAX_NLL`."""
    s = torch.as_tensor(nll_sum, dtype=torch.float64)
    n = torch.as_tensor(n_tokens, dtype=torch.float64)
    return clean_nll(torch.where(n > 0, s / n.clamp(min=1), torch.full_like(s, MAX_NLL)))


def probability(nll_mean: Floats) -> torch.Tensor:
    """Length-normalised probability ``exp(-NLL_mean)`` per example."""
    return torch.exp(-clean_nll(nll_mean))


def normalised_probability(nll_answer: Floats, nll_perturbed: Ragged, eps: float = 0.0) -> torch.Tensor:
    """``p_answer / (p_answer + sum_j p_perturbed_j)`` per example, as a softmax in log space.

    ``eps > 0`` is open-unlearning's ``p / (p + sum_j p_j + eps)`` on the probabilities themselves (compat)."""
    a = clean_nll(nll_answer)
    pert, mask = _ragged(nll_perturbed)
    if eps:
        p = torch.exp(-a)
        return p / (p + (torch.exp(-pert) * mask).sum(1) + eps)
    logits = torch.cat([-a[:, None], (-pert).masked_fill(~mask, -math.inf)], dim=1)
    return torch.softmax(logits, dim=1)[:, 0]


def log_truth_ratio(nll_reference: Floats, nll_perturbed: Ragged) -> torch.Tensor:
    """``log R = NLL_mean(reference) - mean_j NLL_mean(perturbed_j)`` per example.

    R is the perturbed answers' geometric-mean probability over the reference's (the
    paraphrased answer, or the answer for real authors and world facts): below 1 when the
    model prefers the truth.
    """
    ref = clean_nll(nll_reference)
    pert, mask = _ragged(nll_perturbed)
    mean_pert = (pert * mask).sum(1) / mask.sum(1)
    return ref - mean_pert


def truth_ratio_forget(log_r: Floats) -> float:
    """Forget-set truth ratio ``mean(min(R, 1/R))`` (1 = no preference between truth and lies)."""
    x = torch.as_tensor(log_r, dtype=torch.float64)
    return float(torch.exp(-x.abs()).mean()) if x.numel() else 0.0


def truth_ratio_retain(log_r: Floats) -> float:
    """Retain/real-authors/world-facts truth ratio ``mean(max(0, 1 - R))`` (1 = truth strongly preferred)."""
    x = torch.as_tensor(log_r, dtype=torch.float64)
    return float((1.0 - torch.exp(x)).clamp(min=0.0).mean()) if x.numel() else 0.0


def forget_quality(log_r_model: Floats, log_r_retain: Floats) -> float:
    """p-value of the two-sample KS test between the per-example truth ratios R of two models.

    The KS statistic depends only on ranks and exp is monotone, so testing log R gives the
    p-value of ``scipy.stats.ks_2samp`` on the raw R, without the ties that underflow to 0
    would create. Non-finite values are dropped (there should be none after `clean_nll`).
    """
    from scipy.stats import ks_2samp

    a = torch.as_tensor(log_r_model, dtype=torch.float64)
    b = torch.as_tensor(log_r_retain, dtype=torch.float64)
    a, b = a[torch.isfinite(a)], b[torch.isfinite(b)]
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("Forget quality needs at least one finite truth ratio from each model.")
    return float(ks_2samp(a.numpy(), b.numpy()).pvalue)


OU_EPS = 1.0e-10  # open-unlearning's constant in its truth ratio and normalised probability


def truth_ratio_ou(nll_reference: Floats, nll_perturbed: Ragged) -> torch.Tensor:
    """Open-unlearning's per-example truth ratio ``wrong / (correct + 1e-10)`` on probabilities (float64):
    correct ``= exp(-NLL_mean(reference))``, wrong ``= exp(-mean_j NLL_mean(perturbed_j))``. Once the
    reference's probability falls below ~1e-9 the constant dominates (compat ``open-unlearning`` only)."""
    ref = clean_nll(nll_reference)
    pert, mask = _ragged(nll_perturbed)
    wrong = torch.exp(-(pert * mask).sum(1) / mask.sum(1))
    return wrong / (torch.exp(-ref) + OU_EPS)


def truth_ratio_forget_ou(ratio: Floats) -> float:
    """Open-unlearning's forget aggregate ``mean(min(R, 1 / (R + 1e-10)))`` of raw ratios R."""
    r = torch.as_tensor(ratio, dtype=torch.float64)
    return float(torch.minimum(r, 1.0 / (r + OU_EPS)).mean()) if r.numel() else 0.0


def truth_ratio_retain_ou(ratio: Floats) -> float:
    """Open-unlearning's retain aggregate ``mean(max(0, 1 - R))`` of raw ratios R."""
    r = torch.as_tensor(ratio, dtype=torch.float64)
    return float((1.0 - r).clamp(min=0.0).mean()) if r.numel() else 0.0


def truth_ratio_prob_mean(log_r: Floats) -> float:
    """The ``prob_mean`` truth-ratio aggregator (open-unlearning's "extent of knowledge"):
    ``mean(correct / (correct + wrong))`` = ``mean(1 / (1 + R))``, in log space (a sigmoid of -log R)."""
    x = torch.as_tensor(log_r, dtype=torch.float64)
    return float(torch.sigmoid(-x).mean()) if x.numel() else 0.0


def truth_ratio_prob_mean_ou(nll_reference: Floats, nll_perturbed: Ragged) -> float:
    """``prob_mean`` as open-unlearning computes it: ``mean(correct / (correct + wrong + 1e-10))``."""
    ref = clean_nll(nll_reference)
    pert, mask = _ragged(nll_perturbed)
    correct = torch.exp(-ref)
    wrong = torch.exp(-(pert * mask).sum(1) / mask.sum(1))
    return float((correct / (correct + wrong + OU_EPS)).mean()) if ref.numel() else 0.0


def forget_quality_ou(ratio_model: Floats, ratio_retain: Floats) -> float:
    """Open-unlearning's forget quality: the KS p-value between ``1 / (R + 1e-10)`` of the two models (raw R
    from `truth_ratio_ou`; ties where the constant dominates are kept, as there)."""
    from scipy.stats import ks_2samp

    a = 1.0 / (torch.as_tensor(ratio_model, dtype=torch.float64) + OU_EPS)
    b = 1.0 / (torch.as_tensor(ratio_retain, dtype=torch.float64) + OU_EPS)
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("Forget quality needs at least one truth ratio from each model.")
    return float(ks_2samp(a.numpy(), b.numpy()).pvalue)


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean; 0 if any value is zero, negative or NaN (so one broken component shows)."""
    vals = [float(v) for v in values]
    if not vals or any(not v > 0 or math.isnan(v) for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


MODEL_UTILITY_COMPONENTS = tuple(
    f"{s}_{m}" for s in ("retain", "real_authors", "world_facts") for m in ("probability", "rouge", "truth_ratio")
)


def model_utility(summary: Mapping[str, float]) -> float:
    """Harmonic mean of the 9 `MODEL_UTILITY_COMPONENTS` (probability, ROUGE, truth ratio on three sets)."""
    missing = [k for k in MODEL_UTILITY_COMPONENTS if k not in summary]
    if missing:
        raise KeyError(f"Model utility needs {missing}.")
    return harmonic_mean(summary[k] for k in MODEL_UTILITY_COMPONENTS)


def extraction_strength(correct: torch.Tensor, mask: torch.Tensor, ou_quirk: bool = False) -> torch.Tensor:
    """``1 - k/|y|`` per row: k the shortest answer prefix after which the teacher-forced argmax
    predicts every remaining answer token (k = |y| if even the last is wrong). `mask` marks the
    scored positions; rows without any get 0. The evaluators pass the supervised positions without
    the last one (the EOS of a QA answer), as open-unlearning does (METHODS.md section 2.4).

    ``ou_quirk=True`` is open-unlearning's loop (MUSE by default, TOFU with compat ``open-unlearning``):
    k stops at |y| - 1 when no suffix matches, so such a row scores 1/|y| instead of 0."""
    mask = mask.bool()
    ok = correct.bool() | ~mask  # non-answer positions never break a correct suffix
    suffix_ok = ok.flip(-1).long().cumprod(-1).flip(-1).bool()  # all(ok[t:])
    n = mask.sum(-1).to(torch.float64)
    k = (mask & ~suffix_ok).sum(-1).to(torch.float64)
    if ou_quirk:
        k = torch.minimum(k, (n - 1).clamp(min=0))
    return torch.where(n > 0, 1.0 - k / n.clamp(min=1), torch.zeros_like(n))


def exact_memorization(correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, the fraction of `mask`ed positions whose teacher-forced argmax is the true token
    (Tirumala et al. 2022); NaN for rows without positions (skip them when averaging)."""
    mask = mask.bool()
    n = mask.sum(-1).to(torch.float64)
    hits = (correct.bool() & mask).sum(-1).to(torch.float64)
    return torch.where(n > 0, hits / n.clamp(min=1), torch.full_like(n, math.nan))


@lru_cache(maxsize=2)
def _rouge_scorer(stemmer: bool = True):
    import logging

    from rouge_score.rouge_scorer import RougeScorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs every scorer it builds
    return RougeScorer(["rouge1", "rougeL"], use_stemmer=stemmer)


def rouge_scores(predictions: Sequence[str], references: Sequence[str], stemmer: bool = True) -> dict[str, list[float]]:
    """Per prediction against its reference (rouge-score; stemmer on unless `stemmer` is False; '' scores 0):
    ``rouge1_recall``, ``rouge_l_recall`` and ``rouge_l_f1`` (the F-measure of LCS precision and recall),
    open-unlearning's three ROUGE types."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    scorer = _rouge_scorer(stemmer)
    out: dict[str, list[float]] = {"rouge1_recall": [], "rouge_l_recall": [], "rouge_l_f1": []}
    for pred, ref in zip(predictions, references, strict=True):
        s = scorer.score(ref, pred)
        out["rouge1_recall"].append(float(s["rouge1"].recall))
        out["rouge_l_recall"].append(float(s["rougeL"].recall))
        out["rouge_l_f1"].append(float(s["rougeL"].fmeasure))
    return out


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (rouge-score, stemmer on); '' scores 0."""
    return rouge_scores(predictions, references)["rouge_l_recall"]


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], stemmer: bool = True) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference: MUSE's score as open-unlearning computes it
    (rouge-score 0.1.2, stemmer on; '' scores 0); ``stemmer=False`` as MUSE's own code does."""
    return rouge_scores(predictions, references, stemmer)["rouge_l_f1"]
