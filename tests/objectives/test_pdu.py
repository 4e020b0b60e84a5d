"""PDU: logit-margin flattening against a float64 loop (open-unlearning's unshifted mask and the aligned one),
the dual update against a hand computation, epsilon's default (1.1 x the starting retain NLL), the dual
variable restored exactly on resume, and bad input."""

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model
from transformers import TrainerCallback

from sau_trainer import SAUConfig
from sau_trainer.objectives import OBJECTIVES, ObjectiveContext, forward_nll
from sau_trainer.objectives.pdu import DUAL, EPSILON, dual_update, logit_margin_flattening
from sau_trainer.sau import SAUState


@pytest.mark.parametrize("shifted", [False, True])
def test_logit_margin_flattening_matches_float64(shifted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g) * 2
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 0, -100, -100]])
    total, n = 0.0, 0
    for i in range(2):
        for t in range(5):
            if shifted:  # logits at t predict the label at t + 1
                if t == 4 or labels[i, t + 1] == -100:
                    continue
            elif labels[i, t] == -100:  # open-unlearning: the label at t itself (off by one)
                continue
            z = logits[i, t].double()
            total += float(z.max() - z.mean()) ** 2
            n += 1
    assert float(logit_margin_flattening(logits, labels, shifted)) == pytest.approx(total / n, rel=1e-6)


def test_dual_update_by_hand():
    lam, eps = torch.tensor(1.0), torch.tensor(0.5)
    assert float(dual_update(lam, torch.tensor(0.75), eps, 2.0)) == pytest.approx(1.0 + 2.0 * 0.25)
    assert float(dual_update(lam, torch.tensor(0.0), eps, 3.0)) == 0.0  # projected onto lambda >= 0


def _pdu(tmp_path, **kw):
    args = SAUConfig(output_dir=str(tmp_path), report_to=[], objective="pdu", **kw)
    return OBJECTIVES["pdu"](args)


def test_loss_uses_the_old_lambda_then_steps_it(tokenizer, tiny_splits, tmp_path):
    """Two loss calls by hand: L = gamma F + lambda_k (R - eps), then lambda_{k+1} = max(0, lambda_k + eta (R - eps))."""
    from sau_trainer.data.qa import QACollator, tokenize_rows

    model = sparse_model(tokenizer)
    collate = QACollator(tokenizer)
    forget = collate(tokenize_rows(qa(tiny_splits, "forget10", 4), tokenizer))
    retain = collate(tokenize_rows(qa(tiny_splits, "retain90", 4), tokenizer))
    pdu = _pdu(tmp_path, pdu_dual_warmup_epochs=1, pdu_dual_lr=0.5, retain_weight=2.0)
    eps = 1.5
    ctx = ObjectiveContext(tensors={DUAL: torch.tensor(2.0), EPSILON: torch.tensor(eps)})
    model.train()
    with torch.no_grad():
        nll_sum, count, logits = forward_nll(model, retain)
        r = float(nll_sum.double().sum() / count.sum())
        f_logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
        f = float(logit_margin_flattening(f_logits, forget["labels"]))
    lam = 2.0
    for epoch, moves in ((0, False), (1, True), (2, True)):  # warmup: 1 completed epoch
        ctx.epoch = epoch
        loss, logs = pdu(model, forget, retain, ctx)
        assert float(logs["retain_loss"]) == pytest.approx(r, rel=1e-5)
        assert float(logs["pdu_lambda"]) == pytest.approx(lam)
        assert float(logs["forget_loss"]) == pytest.approx(f, rel=1e-5)
        assert float(loss.detach()) == pytest.approx(f + lam * (r - eps), rel=1e-5)  # gamma = 1
        if moves:
            lam = max(0.0, lam + 0.5 * (r - eps))
        assert float(ctx.tensors[DUAL]) == pytest.approx(lam, rel=1e-6)
    model.eval()  # no dual step outside training (e.g. an evaluation loop)
    pdu(model, forget, retain, ctx)
    assert float(ctx.tensors[DUAL]) == pytest.approx(lam, rel=1e-6)


class _Record(TrainerCallback):
    def __init__(self, trainer_ref):
        self.trainer_ref, self.at_begin, self.after = trainer_ref, None, {}

    def on_step_begin(self, args, state, control, **kwargs):
        if self.at_begin is None:
            self.at_begin = self.trainer_ref[0].objective_ctx.tensors[DUAL].detach().clone().cpu()

    def on_step_end(self, args, state, control, **kwargs):
        self.after[state.global_step] = self.trainer_ref[0].objective_ctx.tensors[DUAL].detach().clone().cpu()


def _trainer(tokenizer, tiny_splits, out, base, callbacks=None, **kw):
    return make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                        qa(tiny_splits, "retain90", 16), out, objective="pdu", callbacks=callbacks, **kw)


def test_epsilon_default_is_1_1_times_the_starting_retain_nll(tokenizer, tiny_splits, tmp_path):
    from sau_trainer.data.qa import QACollator, tokenize_rows

    base = sparse_model(tokenizer).state_dict()
    trainer = _trainer(tokenizer, tiny_splits, tmp_path, base, max_steps=1)
    model = sparse_model(tokenizer, state_dict=base).eval()
    with torch.no_grad():
        nll_sum, count, _ = forward_nll(model, QACollator(tokenizer)(tokenize_rows(qa(tiny_splits, "retain90", 16),
                                                                                    tokenizer)))
    want = 1.1 * float(nll_sum.double().sum() / count.sum())
    trainer.train()
    assert float(trainer.objective_ctx.tensors[EPSILON]) == pytest.approx(want, rel=1e-5)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs[0]["pdu_epsilon"] == pytest.approx(want, rel=1e-5) and logs[0]["pdu_lambda"] == 1.0
    given = _trainer(tokenizer, tiny_splits, tmp_path / "given", base, max_steps=1, pdu_epsilon=0.25)
    given.train()
    assert float(given.objective_ctx.tensors[EPSILON]) == 0.25


def test_dual_variable_comes_back_exactly_on_resume(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2, pdu_dual_warmup_epochs=0, pdu_dual_lr=0.1,
              pdu_epsilon=0.5, learning_rate=3e-3, sau=False)  # retain NLL ~6 > epsilon: lambda grows
    ref = []
    rec = _Record(ref)
    first = _trainer(tokenizer, tiny_splits, tmp_path / "run", base, callbacks=[rec], **kw)
    ref.append(first)
    first.train()
    assert len({float(v) for v in rec.after.values()}) == 4  # lambda moved at every step
    saved = SAUState.load(tmp_path / "run" / "checkpoint-2").extra["objective." + DUAL]
    assert torch.equal(saved, rec.after[2])
    ref2 = []
    rec2 = _Record(ref2)
    second = _trainer(tokenizer, tiny_splits, tmp_path / "run", base, callbacks=[rec2],
                      **{**kw, "pdu_epsilon": 0.25})  # a changed epsilon must not replace the checkpoint's
    ref2.append(second)
    second.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert torch.equal(rec2.at_begin, rec.after[2])
    assert torch.equal(second.objective_ctx.tensors[EPSILON].cpu(), first.objective_ctx.tensors[EPSILON].cpu())
    torch.testing.assert_close(rec2.after[4], rec.after[4], rtol=1e-5, atol=1e-6)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="objective='pdu' with retain_loss='kl' needs pdu_epsilon"):
        _pdu(tmp_path, retain_loss="kl")
    with pytest.raises(ValueError, match=r"pdu_epsilon=-0.1 must be >= 0"):
        _pdu(tmp_path, pdu_epsilon=-0.1)
    with pytest.raises(ValueError, match=r"pdu_dual_lr=-1.0 and pdu_dual_warmup_epochs=5 must be >= 0"):
        _pdu(tmp_path, pdu_dual_lr=-1.0)
    with pytest.raises(ValueError, match=r"pdu_dual_update_upon='batch' is not allowed; choose one of"):
        _pdu(tmp_path, pdu_dual_update_upon="batch")
    with pytest.raises(ValueError, match=r"pdu_dual_update_upon='epoch' measures the retain NLL"):
        _pdu(tmp_path, pdu_dual_update_upon="epoch", retain_loss="kl", pdu_epsilon=0.1)


def test_epoch_mode_steps_lambda_once_per_epoch_with_the_end_of_epoch_retain_nll(tokenizer, tiny_splits, tmp_path):
    """forget 8 rows, batch 4: 2 steps per epoch; lambda is constant within an epoch and moves at its end by
    eta * (retain NLL of the end-of-epoch model over the retain set - epsilon), from the end of the 1-epoch warm-up
    on (after 1 completed epoch, as open-unlearning)."""
    from sau_trainer.objectives.pdu import PDU

    seen = {"nll": [], "lam": []}

    class AtEpochEnd(TrainerCallback):  # runs before SAUTrainer's own callback: the weights the update sees
        def on_epoch_end(self, args, state, control, **kwargs):
            seen["nll"].append(PDU.measure_retain_nll(trainer))
            seen["lam"].append(float(trainer.objective_ctx.tensors[DUAL]))

    base = sparse_model(tokenizer).state_dict()
    trainer = _trainer(tokenizer, tiny_splits, tmp_path, base, callbacks=[AtEpochEnd()], max_steps=6,
                       learning_rate=3e-3, pdu_dual_update_upon="epoch", pdu_dual_warmup_epochs=1, pdu_epsilon=0.5,
                       pdu_dual_lr=0.1, sau=False)
    trainer.train()
    steps = [h["pdu_lambda"] for h in trainer.state.log_history if "pdu_lambda" in h]
    assert steps[0] == steps[1] == 1.0  # epoch 0 (the warm-up) uses lambda_0
    want = max(0.0, 1.0 + 0.1 * (seen["nll"][0] - 0.5))  # the end of epoch 0: 1 completed epoch, the warm-up
    assert seen["lam"][0] == 1.0
    assert steps[2] == steps[3] == pytest.approx(want, rel=1e-5)
    assert seen["lam"][1] == pytest.approx(want, rel=1e-6)
    want2 = max(0.0, want + 0.1 * (seen["nll"][1] - 0.5))
    assert steps[4] == steps[5] == pytest.approx(want2, rel=1e-5)
    assert float(trainer.objective_ctx.tensors[DUAL]) == pytest.approx(want2 + 0.1 * (seen["nll"][2] - 0.5),
                                                                          rel=1e-5)
