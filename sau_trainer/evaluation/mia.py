"""Membership-inference attacks, their AUC and privleak (METHODS.md sections 2.1-2.4).

Two sets are compared: members (the forget set) and non-members (a holdout set the model never saw).
Each attack scores every example so that **higher = more likely a non-member**; the metric is the
ROC AUC with holdout as the positive class, ``P(s_holdout > s_forget)`` (+1/2 for ties): about 1 while
the forget data still looks like training data, 0.5 when the two are indistinguishable.

Attacks (as open-unlearning computes them):
- ``loss`` (Yeom et al. 2018): the average NLL over all supervised tokens;
- ``zlib`` (Carlini et al. 2021): that NLL divided by the zlib-compressed length (bytes) of the decoded
  supervised text (of a row's ``zlib_text`` when it has one: MUSE's own code compresses the full text);
- ``min_k`` (Min-K% Prob, Shi et al. 2023): minus the mean of the ``max(1, floor(k n))`` smallest token
  log-probabilities (k = 0.4);
- ``min_k_plus_plus`` (Min-K%++, Zhang et al. 2024): the same over per-token z-scores
  ``(log p(x_t) - mu_t) / sigma_t`` of the token against the model's own next-token distribution;
- ``gradnorm``: the mean over parameter tensors of the L2 norm of the gradient of the mean token NLL
  (batch size 1); ``gradnorm_l1`` and ``gradnorm_linf`` the same with the L1 and L-infinity norms (the other
  norms open-unlearning's attack takes, from the same backward pass);
- ``reference`` (given a reference model): the target's average NLL minus the reference's.
min-k, min-k++ and gradnorm use the supervised positions except the last (the EOS of a QA answer,
the last token of a text), as open-unlearning does.

``privleak`` (MUSE) compares the min-k AUC with the retain model's:
``100 * ((1 - AUC) - (1 - AUC_ret)) / ((1 - AUC_ret) + 1e-10)``: about -100 for a model trained on the
forget set, 0 for one that behaves like the retain model, positive when a model over-forgets.

The first group of functions is pure (tensors in, numbers out); `sequence_scores` and
`membership_inference` run a model.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.qa import IGNORE_INDEX
from ..progress import show_progress as show_bar
from . import metrics

logger = logging.getLogger(__name__)

GRADNORM_NORMS = {"gradnorm": 2.0, "gradnorm_l1": 1.0, "gradnorm_linf": math.inf}  # attack name: p of the norm
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", *GRADNORM_NORMS)
DEFAULT_K = 0.4
MIN_VARIANCE = 1e-6
PRIVLEAK_EPS = 1e-10
DEFAULT_RETAIN_AUC = 0.5  # open-unlearning's fallback when no retain-model log is given


# ----------------------------------------------------------------------------------------- pure pieces
def shifted_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T-1] True where the next-token label is supervised (labels unshifted, -100 = ignored)."""
    return labels[:, 1:] != IGNORE_INDEX


def drop_last(mask: torch.Tensor) -> torch.Tensor:
    """`mask` without the last True of each row (rows with none stay empty)."""
    mask = mask.bool()
    idx = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, idx, torch.full_like(idx, -1)).max(-1, keepdim=True).values
    return mask & (idx != last)


def token_statistics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position (shifted, [B, T-1], float32): the true token's log-probability ``logp``, its min-k++
    z-score ``z``, whether the argmax is right (``correct``), the supervised positions (``mask``) and
    those without the last supervised one (``mask_trunc``)."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    probs = logp_all.exp()
    mu = (probs * logp_all).sum(-1)
    var = ((probs * logp_all.square()).sum(-1) - mu.square()).clamp(min=MIN_VARIANCE)
    z = (logp - mu) / var.sqrt()
    correct = logits.argmax(-1) == targets
    zero = torch.zeros_like(logp)
    return {"logp": torch.where(mask, logp, zero), "z": torch.where(mask, z, zero), "correct": correct & mask,
            "mask": mask, "mask_trunc": drop_last(mask)}


def mean_nll_score(logp: torch.Tensor, mask: torch.Tensor) -> float:
    """The ``loss`` attack: average NLL over the `mask`ed positions of one example (0 if none)."""
    n = int(mask.sum())
    return float(-(logp[mask.bool()].double().sum()) / n) if n else 0.0


def zlib_score(mean_nll: float, text: str) -> float:
    """The ``zlib`` attack: ``mean_nll / len(zlib.compress(text.encode("utf-8")))`` (default level)."""
    return mean_nll / len(zlib.compress(text.encode("utf-8")))


def min_k_score(values: torch.Tensor, k: float = DEFAULT_K) -> float:
    """Minus the mean of the ``max(1, floor(k * n))`` smallest `values` (log-probs or z-scores); 0 if n = 0."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        return 0.0
    n_k = max(1, math.floor(k * n))
    return float(-torch.sort(values).values[:n_k].mean())


def roc_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """``P(s_holdout > s_forget) + 0.5 P(s_holdout == s_forget)`` over all pairs (labels: forget 0, holdout 1)."""
    f = torch.as_tensor(list(forget_scores), dtype=torch.float64)
    h = torch.as_tensor(list(holdout_scores), dtype=torch.float64)
    if f.numel() == 0 or h.numel() == 0:
        raise ValueError("The AUC needs at least one forget and one holdout score.")
    if not (torch.isfinite(f).all() and torch.isfinite(h).all()):
        raise ValueError("Membership scores must be finite.")
    diff = h[None, :] - f[:, None]
    return float(((diff > 0).double().sum() + 0.5 * (diff == 0).double().sum()) / diff.numel())


def privleak(auc: float, auc_retain: float = DEFAULT_RETAIN_AUC) -> float:
    """MUSE's privacy leakage of a min-k AUC relative to the retain model's (see the module docstring)."""
    return ((1.0 - auc) - (1.0 - auc_retain)) / ((1.0 - auc_retain) + PRIVLEAK_EPS) * 100.0


# ----------------------------------------------------------------------------------------- model passes
def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _collate(rows: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    from ..data.qa import QACollator

    return QACollator(pad_token_id=pad_id, padding_side="right")(
        [{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]), "labels": r["labels"]}
         for r in rows])


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return 0 if pad is None else pad


@torch.no_grad()
def _forward_stats(model: Any, rows: Sequence[Mapping[str, Any]], batch_size: int, pad_id: int, desc: str,
                   show_progress: bool) -> list[dict[str, torch.Tensor]]:
    """Per row: its `token_statistics` (on the CPU, without padding)."""
    out: list[dict[str, torch.Tensor] | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, disable=not show_bar(show_progress)):
            idx = order[start : start + batch_size]
            batch = _collate([rows[i] for i in idx], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"].to(device)
            for j, i in enumerate(idx):  # one row at a time: the [T, V] softmax stays small
                n = len(rows[i]["input_ids"])
                stats = token_statistics(logits[j : j + 1, :n], labels[j : j + 1, :n])
                out[i] = {k: v[0].cpu() for k, v in stats.items()}
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def gradnorm_scores(model: Any, rows: Sequence[Mapping[str, Any]], pad_id: int = 0,
                    show_progress: bool = False, p: float = 2.0) -> list[float]:
    """The ``gradnorm`` attack per row with the L`p` norm (1, 2 or inf): see `gradnorm_all`."""
    name = next((n for n, q in GRADNORM_NORMS.items() if q == p), None)
    if name is None:
        raise ValueError(f"gradnorm: p must be 1, 2 or inf (math.inf), got {p!r}.")
    return gradnorm_all(model, rows, pad_id, show_progress, norms={name: p})[name]


def gradnorm_all(model: Any, rows: Sequence[Mapping[str, Any]], pad_id: int = 0, show_progress: bool = False,
                 norms: Mapping[str, float] = GRADNORM_NORMS) -> dict[str, list[float]]:
    """The gradnorm attacks per row, one per entry of `norms` (name: p): batch size 1, train mode, the gradient
    of the mean token NLL over the supervised positions except the last; the score is the mean over parameter
    tensors of the L`p` norm of their gradient (one backward pass for every norm). The model's gradients are
    cleared before and after (never call it mid-accumulation), and its mode and ``requires_grad`` flags are
    restored."""
    device = _device(model)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    scores: dict[str, list[float]] = {name: [] for name in norms}
    try:
        for p in params:
            p.requires_grad_(True)
        model.train()
        for row in tqdm(rows, desc="MIA gradnorm", disable=not show_bar(show_progress)):
            model.zero_grad(set_to_none=True)
            batch = _collate([row], pad_id)
            labels = batch["labels"].to(device)
            mask = drop_last(shifted_mask(labels))
            if not mask.any():
                for name in norms:
                    scores[name].append(0.0)
                continue
            with torch.enable_grad():
                logits = model(input_ids=batch["input_ids"].to(device)).logits[:, :-1].float()
                logp = torch.log_softmax(logits, -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
                loss = -logp[mask].mean()
                loss.backward()
            grads = [p.grad.detach().float() for p in params if p.grad is not None]
            for name, q in norms.items():
                scores[name].append(float(torch.stack([g.norm(q) for g in grads]).mean()) if grads else 0.0)
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    return scores


def sequence_scores(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]], batch_size: int = 8,
                    k: float = DEFAULT_K, gradnorm: bool = True, reference_model: Any = None,
                    show_progress: bool = False, desc: str = "MIA log-likelihoods") -> dict[str, list[float]]:
    """Every attack's score per encoded row (``input_ids`` and ``labels``), plus the teacher-forced
    ``exact_memorization`` (None for a row without positions) and ``extraction_strength``
    (open-unlearning's variant) of each row."""
    pad_id = _pad_id(tokenizer)
    stats = _forward_stats(model, rows, batch_size, pad_id, desc, show_progress)
    out: dict[str, list[float]] = {a: [] for a in ("loss", "zlib", "min_k", "min_k_plus_plus")}
    out["exact_memorization"], out["extraction_strength"] = [], []
    for row, st in zip(rows, stats, strict=True):
        loss = mean_nll_score(st["logp"], st["mask"])
        supervised = [t for t in row["labels"][1:] if t != IGNORE_INDEX]
        text = row["zlib_text"] if "zlib_text" in row else tokenizer.decode(supervised, skip_special_tokens=True)
        out["loss"].append(loss)
        out["zlib"].append(zlib_score(loss, text))
        trunc = st["mask_trunc"]
        out["min_k"].append(min_k_score(st["logp"][trunc], k))
        out["min_k_plus_plus"].append(min_k_score(st["z"][trunc], k))
        em = float(metrics.exact_memorization(st["correct"][None], trunc[None])[0])
        out["exact_memorization"].append(None if math.isnan(em) else em)  # no position to score
        out["extraction_strength"].append(
            float(metrics.extraction_strength(st["correct"][None], trunc[None], ou_quirk=True)[0]))
    if gradnorm:
        out.update(gradnorm_all(model, rows, pad_id, show_progress))
    if reference_model is not None:
        ref = _forward_stats(reference_model, rows, batch_size, pad_id, "MIA reference", show_progress)
        out["reference"] = [a - mean_nll_score(st["logp"], st["mask"]) for a, st in zip(out["loss"], ref, strict=True)]
    return out


def attack_aucs(forget: Mapping[str, list[float]], holdout: Mapping[str, list[float]]) -> dict[str, float]:
    """``{"mia_<attack>": AUC}`` for every attack scored on both sets."""
    return {f"mia_{a}": roc_auc(forget[a], holdout[a]) for a in (*ATTACKS, "reference") if a in forget and a in holdout}


def membership_inference(model: Any, tokenizer: Any, forget_rows: Sequence[Mapping[str, Any]],
                         holdout_rows: Sequence[Mapping[str, Any]], batch_size: int = 8, k: float = DEFAULT_K,
                         gradnorm: bool = True, reference_model: Any = None,
                         show_progress: bool = False) -> dict[str, Any]:
    """Every attack on members (`forget_rows`) against non-members (`holdout_rows`), encoded rows.

    Returns ``{"summary": {"mia_loss": AUC, ...}, "per_example": {"forget": scores, "holdout": scores},
    "k": k}``; privleak needs the retain model's ``mia_min_k`` and is added by `results.attach_forget_quality`.
    """
    if not forget_rows or not holdout_rows:
        raise ValueError("Membership inference needs at least one forget and one holdout example.")
    f = sequence_scores(model, tokenizer, forget_rows, batch_size, k, gradnorm, reference_model, show_progress,
                        desc="MIA forget")
    h = sequence_scores(model, tokenizer, holdout_rows, batch_size, k, gradnorm, reference_model, show_progress,
                        desc="MIA holdout")
    return {"summary": attack_aucs(f, h), "per_example": {"forget": f, "holdout": h}, "k": k}
