"""IdkNLL: learn to answer the forget questions with "I don't know", plus the retain term.

The TOFU "IDK" baseline (Maini et al. 2024, arXiv 2401.06121), listed among the OpenUnlearning methods but
not implemented in open-unlearning itself; METHODS.md 1.2 gives the definition used here:
``L = gamma * NLL_mean(q_f + y_idk) + alpha * NLL_mean(r)`` (1, 1), no reference model.

* ``y_idk`` is one line of the idk set (`SAUConfig.idk_path`; default the package's own 100 answers),
  drawn per forget example and epoch from a generator seeded by ``args.seed`` (open-unlearning's
  ``QAwithIdkDataset`` draws afresh at every fetch; `idk_pairing="fixed"` keeps epoch 0's draw).
* The forget term and the retain term are two token means added 1:1 (open-unlearning's composition). The
  original TOFU code concatenated the idk and retain batches into one forward pass, i.e. one token mean
  over both, which weights the two by their token counts; that variant is not offered.
* The forget term never sees the true forget answers, so ``forget_nll`` is not logged (it would cost a
  forward pass per step); ``forget_loss`` is the NLL of the idk answers.
"""

from dataclasses import dataclass

from ..data.idk import IdkPairing
from .base import Objective, forward_nll
from .losses import mean_token_nll
from .params import param

PAIRINGS = ("epoch", "fixed")  # a draw per example and epoch (the default), or one per example for the run


@dataclass
class IdkParams:
    """The idk answers and how they are paired with the forget questions (IdkNLL, IdkDPO)."""

    idk_path: str | None = param(None, "File of \"I don't know\" answers, one per line (e.g. open-unlearning's "
                                 "data/idk.jsonl, for numbers comparable with published ones); None: the package's "
                                 "own 100.", flat="idk_path")
    pairing: str = param(PAIRINGS[0], "epoch (a seeded draw of one idk answer per forget example and epoch, as "
                         "open-unlearning draws afresh at every fetch) or fixed (one draw per example for the run).",
                         flat="idk_pairing", choices=PAIRINGS)

    def __post_init__(self):
        if self.idk_path is not None:
            from ..data.idk import load_idk_answers

            load_idk_answers(self.idk_path)  # a missing, empty or non-text file is an error now, not mid-run


class IdkNLL(Objective):
    name = "idknll"
    label = "IdkNLL"
    uses_retain = True
    params = IdkParams

    def setup(self, forget_dataset, tokenizer):
        self.pairing = IdkPairing(forget_dataset, tokenizer, self.args, objective=self.name)

    def prepare(self, trainer, ctx):
        self.pairing.draw(trainer.state.num_train_epochs)

    def forget_term(self, model, forget, ctx):
        batch = self.pairing.batch(forget["index"], ctx.epoch, forget["input_ids"].device)
        nll_sum, count, _ = forward_nll(model, batch)
        return mean_token_nll(nll_sum, count), None
