"""The "I don't know" set, and idkdpo / idknll / undial / ceu inside SAUTrainer: reference outputs computed once,
restored on resume, what each objective needs, and bad input rejected before training."""

import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model

from sau_trainer import SAUConfig, SAUTrainer
from sau_trainer.data.idk import default_idk_path, idk_choices, load_idk_answers
from sau_trainer.data.qa import QACollator, encode_qa
from sau_trainer.objectives import forward_nll
from sau_trainer.objectives.idkdpo import REF_IDK_NLL

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- the idk set
def test_the_package_ships_100_distinct_short_answers():
    answers = load_idk_answers()
    assert len(answers) == 100 and len(set(answers)) == 100
    assert all(0 < len(a.split()) <= 12 for a in answers)
    assert Path(default_idk_path()).parent == ROOT / "sau_trainer" / "data"


def test_the_answer_file_is_package_data(tmp_path):
    """A wheel built from the tree contains idk.jsonl (so `pip install sau-trainer` has it)."""
    src = tmp_path / "src"  # a copy of the tree: building in place would leave build/ in the checkout
    shutil.copytree(ROOT / "sau_trainer", src / "sau_trainer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=src, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("sau_trainer/data/idk.jsonl").decode() == Path(default_idk_path()).read_text()


def test_a_users_file_one_answer_per_line(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text("I'm not certain about that.\n\n  No idea.  \nI'm not sure I can help with that.")  # no final newline
    assert load_idk_answers(path) == ["I'm not certain about that.", "No idea.", "I'm not sure I can help with that."]
    assert SAUConfig(output_dir=str(tmp_path), report_to=[], objective="idkdpo", idk_path=str(path)).idk_path


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("\n \n", "has no answer"),
                                           (b"\xff\xfe\x00", "not UTF-8")])
def test_a_bad_idk_file_fails_at_configuration(tmp_path, content, match):
    path = tmp_path / "idk.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="idkdpo", idk_path=str(path))


def test_idk_choices_are_seeded_per_epoch_or_fixed():
    a = idk_choices(100, 50, 3, seed=0, fixed=False)
    assert a.shape == (3, 50) and int(a.min()) >= 0 and int(a.max()) < 100
    assert torch.equal(a, idk_choices(100, 50, 3, seed=0, fixed=False))  # same on every process and on resume
    assert not torch.equal(a[0], a[1])  # a fresh draw each epoch, as open-unlearning's per-fetch draw
    assert not torch.equal(a, idk_choices(100, 50, 3, seed=1, fixed=False))
    f = idk_choices(100, 50, 3, seed=0, fixed=True)
    assert torch.equal(f[0], f[2]) and torch.equal(f[0], a[0])


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
