"""Pure loss functions on logits and labels (labels are -100 where not supervised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.qa import IGNORE_INDEX


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets aligned with every logit position: ``labels[:, 1:]`` padded with -100, ``[b, T]``.

    Why the labels move and the logits stay: ``logits[:, :-1]`` is not contiguous, so reshaping or upcasting
    it copies the whole full-vocabulary tensor (about 1 GB per forward at 8B, batch 4 x 512, 128k
    vocabulary). transformers' own causal-LM loss shifts the labels the same way.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def _functorch_wrapped(t: torch.Tensor) -> bool:
    """True inside a `torch.func` transform (vmap, grad), where data-dependent shapes are not allowed."""
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(check(t)) if check is not None else False


def supervised_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 log-softmax of the logits at the supervised next-token positions only.

    Returns (log-probabilities ``[n, V]`` fp32, their targets ``[n]``, the bool mask ``[b, T]`` of those
    positions over the unshifted logits; its last column is always False). Only these ``n`` rows are upcast
    (a copy of ``n x V``, freed at once; ``log_softmax`` keeps its fp32 output for backward), instead of
    the whole ``[b, T, V]`` tensor.
    """
    targets = shift_labels(labels)
    keep = targets != IGNORE_INDEX
    return F.log_softmax(logits[keep], dim=-1, dtype=torch.float32), targets[keep], keep


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence NLL sum and supervised-token count (next-token shift applied), in fp32."""
    nll, keep = token_nll(logits, labels)
    return nll.sum(dim=1), keep.sum(dim=1)


def mean_token_nll(nll_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Answer-token NLL averaged over every supervised token of the batch."""
    return nll_sum.sum() / count.sum().clamp_min(1)


def npo_loss(nll_sum: torch.Tensor, ref_nll_sum: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): ``-(2/beta) * mean log sigmoid(beta * (NLL_sum - NLL_sum_ref))``."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_sum - ref_nll_sum)).mean()


def simnpo_loss(nll_mean: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): ``-(2/beta) * mean log sigmoid(beta * (NLL_mean - delta))``, no reference."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_mean - delta)).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``KL(p_ref || p)`` averaged over supervised next-token positions (the answer's, EOS included)."""
    logp, _, keep = supervised_log_probs(logits, labels)
    ref_logp = F.log_softmax(ref_logits[keep], dim=-1, dtype=torch.float32)
    return F.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")


RETAIN_KL_POSITIONS = ("sequence", "answer", "open-unlearning")


def retain_kl(logits: torch.Tensor, ref_logits: torch.Tensor, batch: dict, positions: str = "sequence") -> torch.Tensor:
    """The KL retain term ``KL(p_ref || p)`` (summed over the vocabulary), averaged over the positions of
    `positions`, in fp32:

    * ``sequence`` (default): every non-padding position of the retain sequence (``attention_mask`` 1: the
      question's and the answer's tokens, the last one included), TOFU's definition of the term over the
      retain sequence;
    * ``answer``: the supervised next-token positions only (the answer and EOS; the package's former
      definition, `kl_to_reference`);
    * ``open-unlearning``: every one of the ``b x T`` positions, prompt and padding included (open-unlearning's
      and TOFU's code: ``kl_div(..., reduction="batchmean")`` over the flattened logits).
    """
    if positions == "answer":
        return kl_to_reference(logits, ref_logits, batch["labels"])
    if positions == "open-unlearning":
        keep = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    elif positions == "sequence":
        keep = batch["attention_mask"].bool()
    else:
        raise ValueError(f"retain_kl_positions={positions!r} is not allowed; choose one of {list(RETAIN_KL_POSITIONS)}.")
    logp = F.log_softmax(logits[keep], dim=-1, dtype=torch.float32)  # select, then upcast: [n, V] only
    ref_logp = F.log_softmax(ref_logits[keep], dim=-1, dtype=torch.float32)
    return F.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL ``[b, T-1]`` (0 where not supervised) and the bool mask of supervised positions, in fp32."""
    if _functorch_wrapped(logits):  # vmap cannot batch a boolean-mask selection: every position, same values
        targets = shift_labels(labels)
        keep = targets != IGNORE_INDEX
        logp = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return torch.where(keep, nll, 0.0)[:, :-1], keep[:, :-1]
    logp, targets, keep = supervised_log_probs(logits, labels)
    keep = keep[:, :-1]  # the last column is never supervised: the same positions in the same order
    nll = logp.new_zeros(keep.shape).masked_scatter(keep, F.nll_loss(logp, targets, reduction="none"))
    return nll, keep


def dpo_loss(win_nll_sum: torch.Tensor, win_ref_nll_sum: torch.Tensor, lose_nll_sum: torch.Tensor,
             lose_ref_nll_sum: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) as open-unlearning scales it: ``-(2/beta) * mean log sigmoid(beta * (rho_w - rho_l))``.

    ``rho(y) = log p(y) - log p_ref(y) = -NLL_sum(y) + NLL_sum_ref(y)`` for the preferred (win) and the
    rejected (lose) answer of the same question.
    """
    return preference_loss(win_nll_sum, win_ref_nll_sum, lose_nll_sum, lose_ref_nll_sum, beta, scale=2.0 / beta)


def preference_loss(win_nll_sum: torch.Tensor, win_ref_nll_sum: torch.Tensor, lose_nll_sum: torch.Tensor,
                    lose_ref_nll_sum: torch.Tensor, beta: float, scale: float = 1.0) -> torch.Tensor:
    """``-scale * mean log sigmoid(beta * (rho_w - rho_l))``, ``rho(y) = NLL_sum_ref(y) - NLL_sum(y)``.

    With ``scale=1``, AltPO's forget term (Mekala et al. 2024); with ``scale=2/beta``, `dpo_loss`.
    """
    rho_win = win_ref_nll_sum - win_nll_sum
    rho_lose = lose_ref_nll_sum - lose_nll_sum
    return -scale * F.logsigmoid(beta * (rho_win - rho_lose)).mean()


def undial_targets(ref_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """UNDIAL's adjusted teacher distribution at every shifted position: ``softmax(z_ref - beta * e_y)``.

    `ref_logits` ``[b, T, V]``, `labels` ``[b, T]``; returns ``[b, T-1, V]`` (fp32). As in open-unlearning,
    an unsupervised label (-100) indexes the vocabulary from the end (PyTorch's negative indexing), so
    there ``beta`` is subtracted at token ``V - 100``.
    """
    z = ref_logits[:, :-1].float()
    if z.data_ptr() == ref_logits.data_ptr():  # fp32 input: .float() is a view; never modify the caller's logits
        z = z.clone()
    index = labels[:, 1:].remainder(z.size(-1)).unsqueeze(-1)
    z.scatter_add_(-1, index, torch.full(index.shape, -float(beta), dtype=z.dtype, device=z.device))
    return z.softmax(-1)  # in place above: one [b, T-1, V] buffer fewer at real vocabulary sizes


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, beta: float,
                label_mask: bool = False) -> torch.Tensor:
    """UNDIAL (Dong et al. 2025): cross-entropy from the adjusted teacher distribution to the model's.

    Averaged over all ``b * (T-1)`` shifted positions (open-unlearning: prompt and padding included), or,
    with `label_mask`, over the supervised ones only.
    """
    target = undial_targets(ref_logits, labels, beta)
    z = logits[:, :-1].float()
    if label_mask:
        keep = labels[:, 1:] != IGNORE_INDEX
        if not bool(keep.any()):
            return z.sum() * 0.0
        z, target = z[keep], target[keep]
    return F.cross_entropy(z.reshape(-1, z.size(-1)), target.reshape(-1, target.size(-1)))


def ignore_first_answer_tokens(labels: torch.Tensor, n: int) -> torch.Tensor:
    """A copy of `labels` with the first `n` supervised tokens of every row set to -100 (CE-U's footnote trick)."""
    if n <= 0:
        return labels
    supervised = labels != IGNORE_INDEX
    rank = supervised.long().cumsum(dim=1)  # 1 at the first supervised token, 2 at the second, ...
    return labels.masked_fill(supervised & (rank <= n), IGNORE_INDEX)


def ceu_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CE-U's target at every supervised shifted position: ``softmax(sg(z))`` with the true token's logit at -inf.

    Returns (targets ``[n, V]`` fp32, boolean mask ``[b, T-1]`` of the positions they belong to).
    """
    targets = shift_labels(labels)
    keep = targets != IGNORE_INDEX
    z = logits.detach()[keep].float()  # supervised rows only: no fp32 copy of the whole [b, T, V] logits
    z = z.scatter(-1, targets[keep].unsqueeze(-1), float("-inf"))
    return z.softmax(-1), keep[:, :-1]


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE-U (arXiv 2503.01224): mean over supervised positions of ``-sum_v q(v) log softmax(z)(v)``.

    Its gradient with respect to the logits is ``softmax(z) - q``: mass leaves the true token while the rest
    of the distribution keeps its shape. A batch without a supervised position gives 0.
    """
    target, keep = ceu_targets(logits, labels)
    if target.numel() == 0:
        return logits.sum() * 0.0
    z = logits[F.pad(keep, (0, 1), value=False)].float()
    return F.cross_entropy(z, target)
