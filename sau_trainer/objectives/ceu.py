"""CE-U, cross-entropy unlearning ("CE-U: Cross Entropy Unlearning", arXiv 2503.01224).

At every supervised position the model is trained towards its own (stop-gradient) next-token distribution
with the true token removed: ``q_t = softmax(sg(z_t))`` with ``z_t[y] = -inf``,
``L = mean_t [ -sum_v q_t(v) log softmax(z_t)(v) ]``. The gradient with respect to the logits is
``softmax(z_t) - q_t``: probability leaves the true token and the rest keeps its shape, with no reference
model and no unbounded ascent.

As open-unlearning runs it (METHODS.md 1.5): forget-only (no retain term, the retain set is not needed),
and the first ``ceu_ignore_first_n`` supervised tokens of each answer (default 1) are left out of the loss
(the paper's footnote trick). `forget_weight` (default 1) scales the loss.
"""

from dataclasses import dataclass

import torch

from .base import Objective
from .losses import ceu_loss, ignore_first_answer_tokens, mean_token_nll, sequence_nll
from .params import param


@dataclass
class CEUParams:
    ignore_first_n: int = param(1, "Leave the first n supervised tokens of each answer out of the loss.",
                                flat="ceu_ignore_first_n")

    def __post_init__(self):
        if isinstance(self.ignore_first_n, bool) or not isinstance(self.ignore_first_n, int) or self.ignore_first_n < 0:
            raise ValueError(f"ignore_first_n={self.ignore_first_n!r} must be an integer >= 0 (default 1).")


class CEU(Objective):
    name = "ceu"
    label = "CE-U"
    uses_retain = False
    params = CEUParams

    def forget_term(self, model, forget, ctx):
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        labels = ignore_first_answer_tokens(forget["labels"], self.params.ignore_first_n)
        loss = ceu_loss(logits, labels)
        with torch.no_grad():
            nll = mean_token_nll(*sequence_nll(logits, forget["labels"]))
        return loss, nll
