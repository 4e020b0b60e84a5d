"""idkdpo, idknll, undial and ceu set up inside SAUTrainer: reference outputs computed once and restored on
resume, what each objective needs (a reference model, a retain set, question/answer rows), and bad input
rejected before training."""

import math
from pathlib import Path

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model

from sau_trainer import SAUConfig, SAUTrainer
from sau_trainer.data.idk import load_idk_answers
from sau_trainer.data.qa import QACollator, encode_qa
from sau_trainer.objectives import forward_nll
from sau_trainer.objectives.idkdpo import REF_IDK_NLL

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- inside SAUTrainer
def _idkdpo(tokenizer, tiny_splits, out, base, **kw):
    return make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                        qa(tiny_splits, "retain90", 8), out, objective="idkdpo", **kw)


def test_idkdpo_reference_nlls_are_the_starting_models_and_no_reference_stays(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    trainer = _idkdpo(tokenizer, tiny_splits, tmp_path, base, max_steps=4)  # 8 rows, batch 4: 2 epochs
    trainer.train()
    ctx = trainer.objective_ctx
    assert ctx.ref_model is None
    table, choices = ctx.tensors[REF_IDK_NLL], trainer.objective.pairing.choices
    assert table.shape == choices.shape == (2, 8)
    start = sparse_model(tokenizer, state_dict=base).eval()
    answers, rows = load_idk_answers(), qa(tiny_splits, "forget10", 8)
    for e in range(2):
        feats = [encode_qa(tokenizer, rows[i]["question"], answers[int(choices[e, i])]) for i in range(8)]
        with torch.no_grad():
            want = forward_nll(start, QACollator(tokenizer)(feats))[0]
        torch.testing.assert_close(table[e], want, rtol=1e-5, atol=1e-5)
    # at the first step the model is the reference: every log-ratio is 0 and the loss is (2/beta) log 2
    first = next(h for h in trainer.state.log_history if "forget_loss" in h)
    assert abs(first["forget_loss"] - 20 * math.log(2)) < 1e-4


def test_idkdpo_resume_restores_the_reference_nlls(tokenizer, tiny_splits, tmp_path, monkeypatch):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2, sau=False)
    first = _idkdpo(tokenizer, tiny_splits, tmp_path / "run", base, **kw)
    first.train()

    def no_recompute(self, rows):
        raise AssertionError("the reference NLLs were computed again on resume (from the changed model)")

    monkeypatch.setattr(SAUTrainer, "answer_nll_sums", no_recompute)
    second = _idkdpo(tokenizer, tiny_splits, tmp_path / "run", base, **kw)
    second.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert torch.equal(first.objective_ctx.tensors[REF_IDK_NLL], second.objective_ctx.tensors[REF_IDK_NLL])
    for k, v in second.model.state_dict().items():  # same idk draws and reference values: the same weights
        torch.testing.assert_close(v, first.model.state_dict()[k], rtol=1e-5, atol=1e-6)
    other_seed = _idkdpo(tokenizer, tiny_splits, tmp_path / "run", base, **{**kw, "seed": 1})
    with pytest.raises(ValueError, match="belong to other idk pairs"):  # other draws than the saved NLLs
        other_seed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_undial_keeps_a_reference_and_needs_no_retain_set_at_its_defaults(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), None, tmp_path, objective="undial",
                           max_steps=2, sau=False)
    trainer.train()
    ref = trainer.objective_ctx.ref_model
    assert ref is not None and ref is not model and not any(p.requires_grad for p in ref.parameters())
    logs = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logs and not any("retain_loss" in h for h in logs)
    with pytest.raises(ValueError, match="retain term: pass retain_dataset"):
        make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 8), None, tmp_path,
                     objective="undial", retain_weight=1.0)


def test_ceu_is_forget_only(tokenizer, tiny_splits, tmp_path):
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 8), None, tmp_path,
                           objective="ceu", max_steps=2, sau=False)
    trainer.train()
    assert trainer.objective_ctx.ref_model is None and trainer.retain_rows is None
    assert all("retain_loss" not in h for h in trainer.state.log_history)


def test_idknll_learns_the_idk_answers(tokenizer, tiny_splits, tmp_path):
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 8),
                           qa(tiny_splits, "retain90", 8), tmp_path, objective="idknll", max_steps=6,
                           idk_pairing="fixed", learning_rate=3e-3)
    trainer.train()
    idk = [h["forget_loss"] for h in trainer.state.log_history if "forget_loss" in h]
    assert idk[-1] < idk[0] - 0.5  # the NLL of the idk answers goes down
    assert all("forget_nll" not in h for h in trainer.state.log_history)  # not computed (no extra forward)


# ---------------------------------------------------------------------------- bad input, before training
@pytest.mark.parametrize("objective", ["idkdpo", "idknll"])
def test_idk_objectives_need_question_answer_rows(tokenizer, tiny_splits, tmp_path, objective):
    with pytest.raises(ValueError, match="needs `question` and `answer` columns"):
        SAUTrainer(sparse_model(tokenizer), SAUConfig(output_dir=str(tmp_path), report_to=[], objective=objective),
                   forget_dataset=[{"text": "a b c"}], retain_dataset=qa(tiny_splits, "retain90", 4),
                   processing_class=tokenizer)


@pytest.mark.parametrize("field,value", [("idkdpo_beta", 0.0), ("undial_beta", -1.0), ("ceu_ignore_first_n", -1),
                                         ("ceu_ignore_first_n", 1.5), ("idk_pairing", "sometimes")])
def test_bad_values_fail_at_configuration(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        SAUConfig(output_dir=str(tmp_path), report_to=[], **{field: value})


def test_unknown_objective_lists_the_valid_ones_once(tmp_path):
    from sau_trainer.objectives import OBJECTIVES

    with pytest.raises(ValueError) as err:
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="idk_dpo")
    assert all(str(err.value).count(repr(name)) == 1 for name in OBJECTIVES)


def test_objective_saliency_settings_include_these_objectives_fields(tmp_path):
    args = SAUConfig(output_dir=str(tmp_path), report_to=[], objective="undial", saliency_loss="objective")
    settings = args.sau_settings()
    for name in ("idk_path", "idk_pairing", "idkdpo_beta", "undial_beta", "undial_label_mask", "ceu_ignore_first_n"):
        assert settings[name] == getattr(args, name)
    assert "undial_beta" not in SAUConfig(output_dir=str(tmp_path), report_to=[], objective="undial").sau_settings()
