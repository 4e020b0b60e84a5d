"""AltPO, Alternate Preference Optimization (Mekala et al. 2024, "Alternate Preference Optimization for
Unlearning Factual Knowledge in Large Language Models", arXiv 2409.13474).

DPO (Rafailov et al. 2023) with a plausible *alternate* answer ``y_alt`` to the forget question as the
preferred side and the forget answer ``y_f`` as the rejected one, plus the retain term:

``L = gamma * -mean log sigmoid(beta * [rho(y_alt) - rho(y_f)]) + alpha * NLL_mean(r)``,
``rho(y) = log p(y|q) - log p_ref(y|q)`` summed over the answer tokens (EOS included).

Defaults beta 0.1, alpha (`retain_weight`) 1, gamma (`forget_weight`) 1: the middle of open-unlearning's
AltPO grid (beta in {0.05, 0.1, 0.5}, alpha in {1, 2, 5}, learning rate in {1e-5, 2e-5, 5e-5}); sweep those
in a recipe. The forget term is the plain ``-log sigmoid`` of the formula; the authors' code and
open-unlearning's DPO scale it by 2/beta (20 at beta 0.1), which only reweighs it against the retain term:
``forget_weight = 2 / beta`` gives that scaling, and then AltPO on alternates from any column is exactly
open-unlearning's DPO on those alternates (IdkDPO is the same loss with "I don't know" as the alternate).

Alternates (`sau_trainer.data.alternates`), in order of preference: a column of the forget rows
(`alternate_column`), the benchmark's perturbed answers (TOFU's ``perturbed_answer``), or answers the starting
model generates from `alternate_prompt`. A question with several alternates gets one per epoch, drawn by a
generator seeded with ``args.seed`` (`idk_pairing="fixed"`: one for the whole run).

Reference model: not kept in memory. Its log-likelihoods of the forget answers (as NPO's) and of every
(question, alternate) pair the run will see are computed once at train start, exact because the pairs are
drawn from the seed before training; saved with every checkpoint, with the generated alternates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..data.alternates import (
    PERTURBED_COLUMN,
    AlternatePairing,
    alternates_from_column,
    generate_alternates,
    pack_token_lists,
    resolve_source,
    rows_and_columns,
    unpack_token_lists,
)
from ..data.qa import row_kind
from .base import Objective, forward_nll
from .idknll import PAIRINGS
from .losses import mean_token_nll, preference_loss
from .params import param

logger = logging.getLogger(__name__)

REF_ALT_NLL = "altpo_ref_alt_nll_sum"
ALT_CHOICES = "altpo_alt_choices"
GENERATED = "altpo_generated_ids"


@dataclass
class AltPOParams:
    beta: float = param(0.1, "beta of its preference loss (> 0; open-unlearning's grid: 0.05, 0.1, 0.5).",
                        flat="altpo_beta")
    pairing: str = param(PAIRINGS[0], "epoch (a seeded draw of one alternate answer per forget question and epoch) "
                         "or fixed (one draw per question for the run).", flat="idk_pairing", choices=PAIRINGS)
    source: str = param("auto", "Where each forget question's alternate answers come from: column (the column "
                        "`column`), perturbed (the rows' perturbed_answer, e.g. TOFU's), generate (the starting model "
                        "answers `prompt`) or auto (the first of these that is given or present).",
                        flat="alternate_source", choices=("auto", "column", "perturbed", "generate"))
    column: str | None = param(None, "Column of the forget rows holding each question's alternate answer (a string) "
                               "or answers (a list of strings).", flat="alternate_column")
    prompt: str | None = param(None, "Prompt template with {question} and {answer} that asks the starting model (an "
                               "instruct model) for a plausible different answer; generated greedily once at train "
                               "start.", flat="alternate_prompt")
    max_new_tokens: int = param(64, "At most this many tokens per generated alternate answer.",
                                flat="alternate_max_new_tokens")

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta!r} must be > 0 (default 0.1).")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an integer >= 1.")


class AltPO(Objective):
    name = "altpo"
    label = "AltPO"
    params = AltPOParams

    @classmethod
    def check_config(cls, params, config):
        from ..data.alternates import check_alternate_settings

        try:
            check_alternate_settings(params.source, params.column, params.prompt)
        except ValueError as err:
            return [str(err)]
        return []
    uses_retain = True
    needs_reference_nll = True  # the forget answers' reference NLLs (SAUTrainer computes them at train start)

    def setup(self, forget_dataset, tokenizer):
        rows, columns = rows_and_columns(forget_dataset)
        if row_kind(columns) != "qa":
            raise ValueError(f"objective='altpo' pairs each forget question with an alternate answer: the forget set "
                             f"needs `question` and `answer` columns, got {sorted(columns)}.")
        if tokenizer is None:
            raise ValueError("objective='altpo' tokenises its alternate answers: pass `processing_class=tokenizer`.")
        a, p = self.args, self.params
        self.source = resolve_source(p.source, p.column, p.prompt, columns)
        self.tokenizer = tokenizer
        self.questions = [r["question"] for r in rows]
        self.answers = [r["answer"] for r in rows]
        self.pairing = None
        if self.source != "generate":
            column = p.column if self.source == "column" else PERTURBED_COLUMN
            self.pairing = AlternatePairing(self.questions, alternates_from_column(rows, column), tokenizer, a)
            logger.info("AltPO: alternate answers from column %r (%d per question on average)", column,
                        self.pairing.offsets[-1] / max(len(rows), 1))

    def generated_alternates(self, trainer, ctx) -> list[list[str]]:
        """One alternate per question, generated by the starting model (or restored from the checkpoint)."""
        if GENERATED not in ctx.tensors:
            logger.info("AltPO: generating %d alternate answers with alternate_prompt", len(self.questions))
            bs = self.args.per_device_eval_batch_size
            ids = generate_alternates(trainer.model, self.tokenizer, self.questions, self.answers,
                                      self.params.prompt, self.params.max_new_tokens, bs)
            ctx.tensors[GENERATED] = pack_token_lists(ids)
        texts = self.tokenizer.batch_decode(unpack_token_lists(ctx.tensors[GENERATED]), skip_special_tokens=True)
        return [[t.strip()] for t in texts]

    def prepare(self, trainer, ctx):
        if self.source == "generate" and self.pairing is None:
            self.pairing = AlternatePairing(self.questions, self.generated_alternates(trainer, ctx), self.tokenizer,
                                            self.args)
        choices = self.pairing.draw(trainer.state.num_train_epochs)
        saved = ctx.tensors.get(REF_ALT_NLL)
        if saved is not None:  # restored from a checkpoint: computed from the starting model, keep it
            saved_choices = ctx.tensors.get(ALT_CHOICES)
            if saved_choices is None or not torch.equal(saved_choices.cpu(), choices):
                raise ValueError(
                    "The checkpoint's AltPO reference NLLs belong to other alternate pairs (epochs x forget examples "
                    f"{tuple(saved.shape)}, this run {tuple(choices.shape)}): resume with the original seed, "
                    "idk_pairing, alternates and number of epochs, or start a new run."
                )
            return
        pairs, inverse = self.pairing.unique_pairs(choices)
        nll = trainer.answer_nll_sums(self.pairing.encode_pairs(pairs))
        ctx.tensors[REF_ALT_NLL] = nll[inverse].view(choices.shape)
        ctx.tensors[ALT_CHOICES] = choices

    def forget_term(self, model, forget, ctx):
        if ctx.ref_forget_nll_sum is None or REF_ALT_NLL not in ctx.tensors or self.pairing is None:
            raise RuntimeError("AltPO needs the reference NLLs; SAUTrainer computes them at train start.")
        index = forget["index"]
        lose_sum, lose_count, _ = forward_nll(model, forget)
        win_sum, _, _ = forward_nll(model, self.pairing.batch(index, ctx.epoch, lose_sum.device))
        cpu_index = index.cpu()
        ref_lose = ctx.ref_forget_nll_sum[cpu_index].to(lose_sum.device)
        ref_win = ctx.tensors[REF_ALT_NLL][self.pairing.epoch_row(ctx.epoch), cpu_index].to(win_sum.device)
        loss = preference_loss(win_sum, ref_win, lose_sum, ref_lose, self.params.beta)
        return loss, mean_token_nll(lose_sum, lose_count)
