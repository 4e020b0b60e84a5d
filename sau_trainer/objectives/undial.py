"""UNDIAL: unlearning by self-distillation with adjusted logits (Dong et al., NAACL 2025, arXiv 2402.10052).

The teacher is the frozen starting model. At every shifted position its logits get the true next token's
logit lowered by ``beta``, and the model is trained towards that adjusted distribution:
``q_t = softmax(z_ref_t - beta * e_{y_t+1})``, ``L_forget = mean_t [ -sum_v q_t(v) log softmax(z_t)(v) ]``,
``L = gamma * L_forget + alpha * L_retain``. Defaults are open-unlearning's (``configs/trainer/UNDIAL.yaml``,
METHODS.md 1.4): beta 10, gamma 1, alpha **0** (no retain term: then no retain batch is drawn or needed),
retain NLL where alpha is set; OU's learning rate for UNDIAL is 1e-4 (ten times the other methods').

Quirk reproduced (open-unlearning's code, the default): no label mask. The mean runs over all
``b * (T-1)`` positions, prompt and padding included, and at a position whose label is -100 the ``-beta``
lands on vocabulary entry ``V - 100`` (PyTorch's negative indexing), so there the loss is plain
self-distillation towards the reference. ``undial_label_mask=True`` gives the clean variant: the mean over
the supervised positions only.

Memory: the reference model stays in memory. Its logits cannot be cached once per example at real sizes:
they are ``N * T * V`` numbers (TOFU forget10 with Llama-3's 128k vocabulary: 400 x ~150 x 128,256,
about 15 GB in bf16, as much as an 8B model's weights), and a truncated top-k cache would change the loss.
"""

from dataclasses import dataclass

import torch

from .base import Objective
from .losses import mean_token_nll, sequence_nll, undial_loss
from .params import param


@dataclass
class UNDIALParams:
    beta: float = param(10.0, "beta subtracted from the teacher's logit of the true token (>= 0).", flat="undial_beta")
    label_mask: bool = param(False, "Average over supervised positions only (False: open-unlearning's variant, every "
                             "position incl. prompt and padding, beta at token V-100 where the label is -100).",
                             flat="undial_label_mask")

    def __post_init__(self):
        if self.beta < 0:
            raise ValueError(f"beta={self.beta!r} must be >= 0 (open-unlearning uses 10).")


class UNDIAL(Objective):
    name = "undial"
    label = "UNDIAL"
    uses_retain = True
    default_retain_weight = 0.0
    params = UNDIALParams

    def __init__(self, args):
        super().__init__(args)
        self.uses_retain = self.retain_weight != 0  # OU's alpha = 0: no retain term at all

    @property
    def needs_reference_model(self) -> bool:
        return True

    def forget_term(self, model, forget, ctx):
        if ctx.ref_model is None:
            raise RuntimeError("UNDIAL needs the frozen reference model; SAUTrainer builds it at train start.")
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        with torch.no_grad():
            ref_logits = ctx.ref_model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        loss = undial_loss(logits, ref_logits, forget["labels"], self.params.beta, self.params.label_mask)
        with torch.no_grad():
            nll = mean_token_nll(*sequence_nll(logits, forget["labels"]))
        return loss, nll
