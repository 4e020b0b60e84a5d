"""SAUTrainer behaviour: redistribution modes, objectives, resume, logging, bad input."""

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model

from sau_trainer import SAUConfig, SAUTrainer
from sau_trainer.callbacks import SaliencyCallback
from sau_trainer.masks import SparsityMasks, prunable_parameters
from sau_trainer.modeling import build_llama
from sau_trainer.saliency import require_input_grads_if_reentrant  # its __module__: where the hook is made


def _one_step_deltas(tokenizer, tiny_splits, tmp_path, base, **kw):
    model = sparse_model(tokenizer, state_dict=base)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8),
                           tmp_path, max_steps=1, max_grad_norm=0.0, learning_rate=1e-3, **kw)
    trainer.train()
    return {n: p.detach() - base[n] for n, p in prunable_parameters(model).items()}, trainer


@pytest.mark.parametrize("redistribution", ["matrix", "row", "param"])
def test_adamw_step_size_grad_vs_update_mode(tokenizer, tiny_splits, tmp_path, redistribution):
    """AdamW divides each step by its own gradient RMS: W on the gradient almost cancels, W on the update does not."""
    base = sparse_model(tokenizer).state_dict()
    ref, _ = _one_step_deltas(tokenizer, tiny_splits, tmp_path / "ref", base, sau_alpha=0.0)
    ratios = {}
    for target in ("grad", "update"):
        deltas, trainer = _one_step_deltas(tokenizer, tiny_splits, tmp_path / target, base, sau_alpha=2.0,
                                           sau_redistribution=redistribution, sau_redistribution_target=target)
        got, want = [], []
        for n, d in deltas.items():
            g = trainer.sau_state.mask(n)
            w = trainer.sau_state.weight(n).expand_as(d)
            moved = g & (ref[n].abs() > 1e-6)
            got.append((d[moved] / ref[n][moved]).double())
            want.append(w[moved].double())
        ratios[target] = (torch.cat(got), torch.cat(want))
    grad_ratio, w = ratios["grad"]
    update_ratio, _ = ratios["update"]
    assert float(w.mean()) > 1.5  # a large W, so that the difference is visible
    assert abs(float(grad_ratio.median()) - 1.0) < 1e-2  # Adam cancels W applied to the gradient
    torch.testing.assert_close(update_ratio, w, rtol=1e-3, atol=1e-3)  # the step itself is scaled by W
    print(f"{redistribution}: mean W {float(w.mean()):.3f}; step ratio grad mode {float(grad_ratio.median()):.5f}, "
          f"update mode {float(update_ratio.median()):.4f}")


def test_logs_forget_retain_and_sau_statistics(tokenizer, tiny_splits, tmp_path):
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 8),
                           qa(tiny_splits, "retain90", 8), tmp_path, max_steps=2)
    trainer.train()
    history = trainer.state.log_history
    stats = next(h for h in history if "sau/w_min" in h)
    n_matrices = len(prunable_parameters(trainer.model))
    assert sum(k.startswith("sau/selected_fraction/") for k in stats) == n_matrices
    assert 1.0 <= stats["sau/w_min"] <= stats["sau/w_max"]
    steps = [h for h in history if "loss" in h]
    assert steps and all({"forget_loss", "retain_loss", "forget_nll"} <= set(h) for h in steps)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ga", "graddiff", "npo", "simnpo"])
def test_objectives_make_the_model_forget(memorized, tmp_path, objective):
    from sau_trainer.data.qa import QACollator, tokenize_rows
    from sau_trainer.objectives import forward_nll
    from sau_trainer.pruning import prune_model

    tok = memorized.tokenizer
    forget, retain = qa(memorized.benchmark, "forget10"), qa(memorized.benchmark, "retain90")
    model = memorized.load_model()
    prune_model(model, "magnitude", sparsity=0.3)

    @torch.no_grad()
    def answer_stats(rows):
        model.eval()
        batch = QACollator(tok)(tokenize_rows(rows, tok))
        nll_sum, count, _ = forward_nll(model, batch)
        return float(torch.exp(-nll_sum / count).mean()), float(nll_sum.sum() / count.sum())

    p_before, _ = answer_stats(forget)
    _, retain_before = answer_stats(retain[:40])
    lr = 4e-3 if objective == "simnpo" else 1e-3  # SimNPO's forget weight is 0.125
    trainer = make_trainer(model, tok, forget, retain, tmp_path, objective=objective, learning_rate=lr, max_steps=10)
    trainer.train()
    p_after, _ = answer_stats(forget)
    _, retain_after = answer_stats(retain[:40])
    print(f"{objective}: forget p {p_before:.3f} -> {p_after:.3f}; retain NLL {retain_before:.3f} -> {retain_after:.3f}")
    assert p_before > 0.8
    assert p_after < 0.6 * p_before
    if objective == "graddiff":
        assert retain_after < retain_before + 1.0  # the retain term holds the retain NLL within 1 nat/token


def test_resume_restores_m_g_w_without_a_new_pass(tokenizer, tiny_splits, tmp_path, monkeypatch):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2, sau_alpha=0.5, objective="npo")
    first = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                         qa(tiny_splits, "retain90", 8), tmp_path / "run", **kw)
    first.train()
    full_run = {k: v.clone() for k, v in first.model.state_dict().items()}

    def no_pass(self):
        raise AssertionError("the saliency pass ran again on resume")

    monkeypatch.setattr(SaliencyCallback, "build_state", no_pass)
    second = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                          qa(tiny_splits, "retain90", 8), tmp_path / "run", **kw)
    second.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    a, b = first.sau_state, second.sau_state
    assert a.settings == b.settings
    for n in a.selected:
        assert torch.equal(a.mask(n), b.mask(n)) and torch.equal(a.weights[n].cpu(), b.weights[n].cpu())
        assert torch.equal(first.sparsity_masks.get(n), second.sparsity_masks.get(n))
    assert torch.equal(first.objective_ctx.ref_forget_nll_sum, second.objective_ctx.ref_forget_nll_sum)
    for k, v in second.model.state_dict().items():  # same data, same retain draws: the same final weights
        torch.testing.assert_close(v, full_run[k], rtol=1e-5, atol=1e-6)


def test_resume_with_other_sau_settings_is_refused(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(max_steps=2, save_strategy="steps", save_steps=2)
    make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                 qa(tiny_splits, "retain90", 8), tmp_path, **kw).train()
    other = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                         qa(tiny_splits, "retain90", 8), tmp_path, sau_topk=0.5, **{**kw, "max_steps": 3})
    with pytest.raises(ValueError, match="other SAU settings.*sau_topk"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_saved_model_has_masks_and_state(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8),
                           tmp_path, max_steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    from sau_trainer.sau import SAUState

    state = SAUState.load(tmp_path / "final")
    assert state.settings == trainer.args.sau_settings()
    assert all(torch.equal(state.mask(n), trainer.sau_state.mask(n).cpu()) for n in state.selected)
    loaded = SparsityMasks.load(tmp_path / "final")
    assert all(torch.equal(loaded.get(n), masks.get(n)) for n in masks.names)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    inferred = SparsityMasks.from_model(reloaded)
    assert inferred.sparsity() == pytest.approx(masks.sparsity(), abs=1e-4)


# ---------------------------------------------------------------------------- bad input, before any training
def _args(tmp_path, **kw):
    return SAUConfig(output_dir=str(tmp_path), report_to=[], **kw)


def test_empty_forget_set(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="forget set is empty"):
        SAUTrainer(sparse_model(tokenizer), _args(tmp_path, objective="ga"), forget_dataset=[],
                   processing_class=tokenizer)


def test_missing_columns(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="forget set has the wrong columns.*`question` and `answer`"):
        SAUTrainer(sparse_model(tokenizer), _args(tmp_path, objective="ga"),
                   forget_dataset=[{"question": "q?", "response": "a"}], processing_class=tokenizer)
    from datasets import Dataset

    with pytest.raises(ValueError, match="retain set has the wrong columns"):
        SAUTrainer(sparse_model(tokenizer), _args(tmp_path), forget_dataset=[{"text": "a b c"}],
                   retain_dataset=Dataset.from_list([{"prompt": "x"}]), processing_class=tokenizer)


def test_retain_needed(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="retain term: pass retain_dataset"):
        SAUTrainer(sparse_model(tokenizer), _args(tmp_path, objective="npo"), forget_dataset=[{"text": "a b"}],
                   processing_class=tokenizer)


def test_model_without_prunable_matrices(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer)))  # Conv1D, no Linear
    with pytest.raises(ValueError, match="no prunable matrices"):
        SAUTrainer(model, _args(tmp_path, objective="ga"), forget_dataset=[{"text": "a"}], processing_class=tokenizer)


def test_partial_mask_file(tokenizer, tmp_path):
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    partial = SparsityMasks.from_tensors({n: masks.get(n) for n in masks.names[:3]})
    with pytest.raises(ValueError, match="cover 3 of the model's 14 prunable matrices"):
        SAUTrainer(model, _args(tmp_path, objective="ga"), forget_dataset=[{"text": "a"}],
                   processing_class=tokenizer, sparsity_masks=partial)


def test_explicit_masks_zero_the_model_before_anything_runs(tokenizer, tmp_path):
    model = sparse_model(tokenizer)
    masks = SparsityMasks.from_model(model)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            p.add_(0.01)  # dense again
    assert masks.count_nonzero_pruned(model) > 0
    SAUTrainer(model, _args(tmp_path, objective="ga"), forget_dataset=[{"text": "a"}], processing_class=tokenizer,
               sparsity_masks=masks)
    assert masks.count_nonzero_pruned(model) == 0


def test_saved_masks_of_another_model(tokenizer, tmp_path):
    other = build_llama("tiny", tokenizer, hidden_size=64, intermediate_size=128)
    path = SparsityMasks.dense(other).save(tmp_path)
    with pytest.raises(ValueError, match="different model"):
        SAUTrainer(sparse_model(tokenizer), _args(tmp_path, objective="ga"), forget_dataset=[{"text": "a"}],
                   processing_class=tokenizer, sparsity_masks=path)


def test_peft_model_is_rejected(tokenizer, tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(sparse_model(tokenizer), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="PEFT/LoRA.*dense"):
        SAUTrainer(model, _args(tmp_path, objective="ga"), forget_dataset=[{"text": "a"}], processing_class=tokenizer)


def test_topk_out_of_range_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="sau_topk"):
        _args(tmp_path, sau_topk=1.2)


# ---------------------------------------------------------------------------- options
def test_dense_params_freeze_and_topk(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    dense_names = [n for n in base if n not in prunable_parameters(sparse_model(tokenizer, state_dict=base))]
    forget, retain = qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8)

    frozen = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, forget, retain, tmp_path / "f",
                          sau_dense_params="freeze", max_steps=2)
    frozen.train()
    after = frozen.model.state_dict()
    assert all(torch.equal(after[n], base[n]) for n in dense_names)

    topk = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, forget, retain, tmp_path / "t",
                        sau_dense_params="topk", max_steps=2)
    topk.train()
    after = topk.model.state_dict()
    emb = "model.embed_tokens.weight"
    g = topk.sau_state.mask(emb)
    assert int(g.sum()) == -(-3 * g.numel() // 10)  # ceil(0.3 * |S|) with M = all ones
    assert torch.equal(after[emb][~g], base[emb][~g])
    assert not torch.equal(after[emb][g], base[emb][g])
    assert float(topk.sau_state.weight(emb)) == 1.0  # nothing pruned: I_P = 0, W = 1


def test_objective_saliency_of_ga_equals_forget_nll_saliency(tokenizer, tiny_splits, tmp_path):
    """GA's forget term is -NLL: its squared gradients are those of the NLL."""
    base = sparse_model(tokenizer).state_dict()
    states = []
    for loss in ("forget_nll", "objective"):
        t = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8), None,
                         tmp_path / loss, objective="ga", saliency_loss=loss, max_steps=1)
        t.train()
        states.append(t.sau_state)
    for n in states[0].selected:
        assert torch.equal(states[0].mask(n), states[1].mask(n))
        assert torch.equal(states[0].weights[n], states[1].weights[n])


def test_objective_saliency_of_npo_differs_from_nll(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    states = []
    for loss in ("forget_nll", "objective"):
        t = make_trainer(sparse_model(tokenizer, state_dict=base), tokenizer, qa(tiny_splits, "forget10", 8),
                         qa(tiny_splits, "retain90", 8), tmp_path / loss, objective="npo", saliency_loss=loss,
                         max_steps=1)
        t.train()
        states.append(t.sau_state)
    assert "npo_beta" in states[1].settings and "npo_beta" not in states[0].settings
    assert any(not torch.equal(states[0].mask(n), states[1].mask(n)) for n in states[0].selected)


def test_resume_keeps_the_starting_model_as_kl_reference(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(max_steps=3, save_strategy="steps", save_steps=2, retain_loss="kl")
    args = (tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), tmp_path)
    make_trainer(sparse_model(tokenizer, state_dict=base), *args, **kw).train()
    resumed = make_trainer(sparse_model(tokenizer, state_dict=base), *args, **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    ref = resumed.objective_ctx.ref_model.state_dict()
    assert all(torch.equal(ref[k], base[k]) for k in base)


def test_kl_retain_loss_uses_a_frozen_copy(tokenizer, tiny_splits, tmp_path):
    trainer = make_trainer(sparse_model(tokenizer), tokenizer, qa(tiny_splits, "forget10", 8),
                           qa(tiny_splits, "retain90", 8), tmp_path, retain_loss="kl", max_steps=2, logging_steps=1)
    trainer.train()
    ref = trainer.objective_ctx.ref_model
    assert ref is not None and ref is not trainer.model and not any(p.requires_grad for p in ref.parameters())
    kl = [h["retain_loss"] for h in trainer.state.log_history if "retain_loss" in h]
    assert kl[0] == pytest.approx(0.0, abs=1e-5)  # the first step starts from the reference itself
    assert kl[-1] > 0


@pytest.mark.parametrize("sau", [True, False])
def test_frozen_parameters_under_reentrant_checkpointing(tokenizer, tiny_splits, tmp_path, sau):
    """transformers 4.57 checkpoints reentrantly by default: with the embeddings frozen (here by
    ``sau_dense_params="freeze"``) its blocks would get no gradient, and the backward fails. The run equals
    the one without checkpointing, and the trainer's input-grad hook is gone after training."""
    base = sparse_model(tokenizer).state_dict()
    forget, retain = qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8)
    runs = {}
    for checkpointing in (False, True):
        model = sparse_model(tokenizer, state_dict=base)
        hooks_before = dict(model.get_input_embeddings()._forward_hooks)
        trainer = make_trainer(model, tokenizer, forget, retain, tmp_path / str(checkpointing), sau=sau,
                               sau_dense_params="freeze", max_steps=2, gradient_checkpointing=checkpointing,
                               gradient_checkpointing_kwargs={"use_reentrant": True} if checkpointing else None)
        trainer.train()
        runs[checkpointing] = {n: p.detach().clone() for n, p in model.named_parameters()}
        own = [h for k, h in model.get_input_embeddings()._forward_hooks.items() if k not in hooks_before]
        assert all(getattr(h, "__module__", "") != require_input_grads_if_reentrant.__module__ for h in own)
    for n, p in prunable_parameters(sparse_model(tokenizer, state_dict=base)).items():
        assert not torch.equal(runs[True][n], p.detach())  # every prunable matrix moved
        torch.testing.assert_close(runs[True][n], runs[False][n], rtol=1e-5, atol=1e-7)
