"""IdkDPO: DPO with "I don't know" as the preferred answer and the forget answer as the rejected one.

DPO is Rafailov et al. 2023; TOFU (Maini et al. 2024, arXiv 2401.06121) used it for unlearning and the NPO
paper named it IdkDPO. As open-unlearning computes it (METHODS.md 1.1), with ``rho(y) = log p(y|q) -
log p_ref(y|q)`` summed over the answer tokens (EOS included):
``L = gamma * -(2/beta) * mean log sigmoid(beta * (rho(y_idk) - rho(y_f))) + alpha * NLL_mean(r)``,
beta 0.1 (OU's config; its class default is 1.0), gamma 1, alpha 1. The 2/beta factor and the retain term
are open-unlearning's (the original TOFU DPO had neither); reproduced as the default.

Reference model: not kept in memory. open-unlearning runs the frozen starting model on both answers at every
step. Here the reference log-likelihoods are computed once at train start: those of the forget answers (as
NPO's) and those of the idk answer each forget example gets in each epoch. That is exact, not an
approximation, because the idk answer is drawn per (example, epoch) from a generator seeded by
``args.seed`` (open-unlearning draws uniformly afresh at every fetch, which is the same distribution: a new
answer every epoch), so every pair the run will see is known before it starts. The cost is one forward pass
per (example, epoch) pair at train start, as many reference forwards as open-unlearning spends during
training; ``idk_pairing="fixed"`` (one draw per example for the whole run) needs one per example.
"""

from dataclasses import dataclass

import torch

from ..data.idk import IdkPairing
from .base import Objective, forward_nll
from .idknll import IdkParams
from .losses import dpo_loss, mean_token_nll
from .params import param

REF_IDK_NLL = "idkdpo_ref_idk_nll_sum"
IDK_CHOICES = "idkdpo_idk_choices"


@dataclass
class IdkDPOParams(IdkParams):
    beta: float = param(0.1, "beta of DPO (> 0; open-unlearning's config: 0.1; the loss is scaled by 2/beta).",
                        flat="idkdpo_beta")

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta!r} must be > 0 (open-unlearning uses 0.1).")


class IdkDPO(Objective):
    name = "idkdpo"
    label = "IdkDPO"
    params = IdkDPOParams
    uses_retain = True
    needs_reference_nll = True  # the forget answers' reference NLLs (SAUTrainer computes them at train start)

    def setup(self, forget_dataset, tokenizer):
        self.pairing = IdkPairing(forget_dataset, tokenizer, self.args, objective=self.name)

    def prepare(self, trainer, ctx):
        choices = self.pairing.draw(trainer.state.num_train_epochs)
        saved = ctx.tensors.get(REF_IDK_NLL)
        if saved is not None:  # restored from a checkpoint: computed from the starting model, keep it
            saved_choices = ctx.tensors.get(IDK_CHOICES)
            if saved_choices is None or not torch.equal(saved_choices.cpu(), choices):
                raise ValueError(
                    "The checkpoint's IdkDPO reference NLLs belong to other idk pairs (epochs x forget examples "
                    f"{tuple(saved.shape)}, this run {tuple(choices.shape)}): resume with the original seed, "
                    "idk_pairing and number of epochs, or start a new run."
                )
            return
        pairs, inverse = self.pairing.unique_pairs(choices)
        nll = trainer.answer_nll_sums(self.pairing.encode_pairs(pairs))
        ctx.tensors[REF_IDK_NLL] = nll[inverse].view(choices.shape)
        ctx.tensors[IDK_CHOICES] = choices

    def forget_term(self, model, forget, ctx):
        if ctx.ref_forget_nll_sum is None or REF_IDK_NLL not in ctx.tensors:
            raise RuntimeError("IdkDPO needs the reference NLLs; SAUTrainer computes them at train start.")
        index = forget["index"]
        lose_sum, lose_count, _ = forward_nll(model, forget)
        win_sum, _, _ = forward_nll(model, self.pairing.batch(index, ctx.epoch, lose_sum.device))
        cpu_index = index.cpu()
        ref_lose = ctx.ref_forget_nll_sum[cpu_index].to(lose_sum.device)
        ref_table = ctx.tensors[REF_IDK_NLL]
        ref_win = ref_table[self.pairing.epoch_row(ctx.epoch), cpu_index].to(win_sum.device)
        loss = dpo_loss(win_sum, ref_win, lose_sum, ref_lose, self.params.beta)
        return loss, mean_token_nll(lose_sum, lose_count)

