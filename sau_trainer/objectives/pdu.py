"""PDU, Primal-Dual Unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual
Framework for Large Language Models", arXiv 2506.05314).

Unlearning as a constrained problem: flatten the forget logits subject to ``L_retain <= epsilon``, solved by
primal-dual descent-ascent on ``L = gamma * L_forget + lambda * (L_retain - epsilon)`` (METHODS.md 1.8):

* forget term, "logit-margin flattening": ``sum_{t in M} (max_v z_t(v) - mean_v z_t(v))^2 / |M|``;
* dual ascent after ``pdu_dual_warmup_epochs`` completed epochs, on every loss call (every micro-batch,
  as open-unlearning's ``dual_update_upon=step``): ``lambda <- max(0, lambda + eta * (L_retain - epsilon))``
  with the batch's retain loss, after the loss of that batch was formed with the old ``lambda``;
  ``lambda`` starts at ``alpha`` (`retain_weight`, default 1). With ``pdu_dual_update_upon="epoch"`` the
  same step is taken once at the end of each epoch from the end of the last warm-up epoch on (warm-up 5:
  after epochs 5, 6, 7, ... counted from 1, as open-unlearning; the package's first version began one
  epoch later), with the retain NLL of the end-of-epoch model (open-unlearning averages the retain halves
  of one pass over its train loader, i.e. ``|forget|`` random retain rows; here the whole retain set, token
  mean, eval mode).

Quirk reproduced: open-unlearning takes ``M`` as the positions whose *unshifted* label is supervised, while
the logits at position t predict token t+1, so ``M`` is off by one (it contains the last answer position,
whose logits predict past the EOS, and misses the last prompt position, which predicts the first answer
token). `pdu_shifted_mask=True` gives the aligned set.

Defaults: open-unlearning leaves ``epsilon`` required; here it defaults to 1.1 x the retain NLL of the
starting model, measured at train start over the whole retain set (token mean, eval mode) and logged; the
paper's rule of thumb is "slightly above the initial retain loss". ``lambda`` and ``epsilon`` are saved with
every checkpoint and restored exactly on resume. Under data parallel the retain loss of the dual update is
averaged over processes, so every rank keeps the same ``lambda``. No reference model (unless
``retain_loss="kl"``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..data.qa import IGNORE_INDEX
from .base import Objective
from .losses import mean_token_nll, sequence_nll
from .params import param

logger = logging.getLogger(__name__)

DUAL, EPSILON = "pdu_dual", "pdu_epsilon"
EPSILON_FACTOR = 1.1


def logit_margin_flattening(logits: torch.Tensor, labels: torch.Tensor, shifted: bool = False) -> torch.Tensor:
    """``mean_{t in M} (max_v z_t - mean_v z_t)^2`` in fp32.

    ``M`` = positions whose label is supervised: unshifted (open-unlearning) or, with `shifted`, the
    positions whose logits predict a supervised token.
    """
    if shifted:
        logits, keep = logits[:, :-1], labels[:, 1:] != IGNORE_INDEX
    else:
        keep = labels != IGNORE_INDEX
    z = logits[keep].float()  # select, then upcast: no fp32 copy of the whole [b, T, V] logits
    margin = z.max(dim=-1).values - z.mean(dim=-1)
    return margin.square().sum() / keep.sum().clamp_min(1)


def dual_update(lam: torch.Tensor, retain_loss: torch.Tensor, epsilon: torch.Tensor, lr: float) -> torch.Tensor:
    """One projected dual-ascent step: ``max(0, lambda + lr * (L_retain - epsilon))``."""
    return (lam + lr * (retain_loss.detach().to(lam.dtype) - epsilon)).clamp_min(0.0)


@dataclass
class PDUParams:
    epsilon: float | None = param(None, "Retain-loss bound epsilon of the constraint; None: 1.1 x the retain NLL of "
                                  "the starting model over the retain set, measured at train start.",
                                  flat="pdu_epsilon")
    dual_lr: float = param(1.0, "Step size eta of the dual ascent on lambda.", flat="pdu_dual_lr")
    dual_warmup_epochs: int = param(5, "Completed epochs before lambda starts to move.", flat="pdu_dual_warmup_epochs")
    primal_dual: bool = param(True, "Update lambda by dual ascent (False: lambda stays at retain_weight).",
                              flat="pdu_primal_dual")
    dual_update_upon: str = param("step", "When lambda moves: step (every loss call, open-unlearning's default) or "
                                  "epoch (at each epoch end, with the retain NLL of the end-of-epoch model over the "
                                  "retain set).", flat="pdu_dual_update_upon", choices=("step", "epoch"))
    shifted_mask: bool = param(False, "Flatten the logits that predict answer tokens (False: open-unlearning's "
                               "unshifted label mask, off by one).", flat="pdu_shifted_mask")

    def __post_init__(self):
        if self.epsilon is not None and self.epsilon < 0:
            raise ValueError(f"epsilon={self.epsilon!r} must be >= 0 (a bound on the retain loss), or None.")
        if self.dual_lr < 0 or self.dual_warmup_epochs < 0:
            raise ValueError(f"dual_lr={self.dual_lr!r} and dual_warmup_epochs={self.dual_warmup_epochs!r} must be "
                             ">= 0.")


class PDU(Objective):
    name = "pdu"
    label = "PDU"
    uses_retain = True
    params = PDUParams

    @classmethod
    def check_config(cls, params, config):
        if params.epsilon is None and config.retain_loss == "kl":
            return ["objective='pdu' with retain_loss='kl' needs pdu_epsilon: its default (1.1 x the starting "
                    "retain NLL) measures an NLL, and the starting KL is 0."]
        if params.dual_update_upon == "epoch" and config.retain_loss == "kl":
            return ["objective='pdu' with pdu_dual_update_upon='epoch' measures the retain NLL at each epoch end; it "
                    "does not combine with retain_loss='kl' (use 'step')."]
        return []

    def forget_term(self, model, forget, ctx):
        logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        flat = logit_margin_flattening(logits, forget["labels"], shifted=self.params.shifted_mask)
        return flat, mean_token_nll(*sequence_nll(logits, forget["labels"]))

    def prepare(self, trainer, ctx):
        device = trainer.args.device
        if EPSILON not in ctx.tensors:
            eps = self.params.epsilon
            if eps is None:
                start = self.measure_retain_nll(trainer)
                eps = EPSILON_FACTOR * start
                logger.info("PDU: epsilon = %.3g x the starting retain NLL %.6f = %.6f", EPSILON_FACTOR, start, eps)
            else:
                logger.info("PDU: epsilon = %.6f (pdu_epsilon)", eps)
            ctx.tensors[EPSILON] = torch.tensor(float(eps), dtype=torch.float32)
        if DUAL not in ctx.tensors:
            ctx.tensors[DUAL] = torch.tensor(float(self.retain_weight), dtype=torch.float32)
        ctx.tensors[EPSILON] = ctx.tensors[EPSILON].to(device)
        ctx.tensors[DUAL] = ctx.tensors[DUAL].to(device)

    @staticmethod
    @torch.no_grad()
    def measure_retain_nll(trainer) -> float:
        """Token-mean answer NLL of the current model over the whole retain set (eval mode)."""
        rows = trainer.retain_rows
        sums = trainer.answer_nll_sums(rows)
        count = sum(sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows)
        return float(sums.double().sum()) / max(count, 1)

    def __call__(self, model, forget, retain, ctx):
        if retain is None:
            raise ValueError("Objective 'pdu' needs a retain set: pass retain_dataset=...")
        if DUAL not in ctx.tensors:
            raise RuntimeError("PDU's dual variable is not set: SAUTrainer sets it at train start (Objective.prepare).")
        f_term, f_nll = self.forget_term(model, forget, ctx)
        r_term = self.retain_term(model, retain, ctx)
        lam = ctx.tensors[DUAL].to(r_term.device)
        eps = ctx.tensors[EPSILON].to(r_term.device)
        loss = self.forget_weight * f_term + lam * (r_term - eps)
        logs = {"forget_loss": f_term.detach(), "forget_nll": f_nll.detach(), "retain_loss": r_term.detach(),
                "pdu_lambda": lam.detach().clone(), "pdu_epsilon": eps}
        if (self.params.primal_dual and self.params.dual_update_upon == "step" and model.training
                and ctx.epoch >= self.params.dual_warmup_epochs):
            ctx.tensors[DUAL] = dual_update(lam, _mean_over_processes(r_term.detach()), eps, self.params.dual_lr)
        return loss, logs

    @classmethod
    def definitions(cls, args):
        out = super().definitions(args)
        if (args.get("pdu_dual_update_upon") == "epoch" and args.get("pdu_primal_dual", True)
                and args.get("pdu_dual_warmup_epochs", 5) > 0):  # without a warm-up both versions step every epoch
            out["pdu_epoch_dual_step"] = 2  # 2: from the end of epoch `warmup` on (1: from epoch warmup + 1)
        return out

    def on_epoch_end(self, trainer, ctx):
        """``pdu_dual_update_upon="epoch"``: one dual step with the retain NLL of the end-of-epoch model, at the
        end of every epoch once ``pdu_dual_warmup_epochs`` epochs are complete (warm-up 5: after the 5th, 6th,
        ... epoch, as open-unlearning steps)."""
        completed = math.ceil(trainer.state.epoch - 1e-9)  # epochs completed, the one that just ended included
        if not (self.params.primal_dual and self.params.dual_update_upon == "epoch"
                and completed >= self.params.dual_warmup_epochs):
            return
        lam, eps = ctx.tensors[DUAL], ctx.tensors[EPSILON]
        retain_nll = torch.tensor(self.measure_retain_nll(trainer), device=lam.device)
        ctx.tensors[DUAL] = dual_update(lam, retain_nll, eps, self.params.dual_lr)
        logger.info("PDU: end of epoch %d: retain NLL %.6f, lambda %.6f -> %.6f", completed, float(retain_nll),
                    float(lam), float(ctx.tensors[DUAL]))


def _mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over data-parallel processes (itself on one process)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value
