"""RMU: control vector and masked activation MSE against float64 references; the hooked block's default; a
truncated reference that reproduces the starting model's activations; only the trainable parameters train
and (with SAU) get a saliency; the control vector comes back exactly on resume; bad input fails up front."""

import pytest
import torch
from sau_testing import make_trainer, qa, sparse_model

from sau_trainer import SAUConfig
from sau_trainer.masks import prunable_parameters
from sau_trainer.objectives.rmu import CONTROL, _Capture, control_vector, default_layer, masked_activation_mse
from sau_trainer.sau import SAUState


def test_control_vector_norm_and_sign():
    g = torch.Generator().manual_seed(3)
    v = control_vector(64, 2.0, g)
    u = torch.rand(64, generator=torch.Generator().manual_seed(3), dtype=torch.float32).double()
    torch.testing.assert_close(v.double(), 2.0 * u / u.norm(), rtol=1e-6, atol=1e-7)
    assert float(v.double().norm()) == pytest.approx(2.0, rel=1e-6)
    assert bool((v > 0).all())  # U[0, 1): every component positive, as in open-unlearning


def test_masked_activation_mse_matches_float64():
    g = torch.Generator().manual_seed(0)
    h, target = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    labels = torch.tensor([[-100, 7, 8, -100], [-100, -100, -100, 2], [1, 2, 3, 4]])
    mask = labels != -100
    want = 0.0
    for i in range(3):  # mean_i [ sum_{t in M_i} (1/d) ||H - G||^2 / |M_i| ]
        ts = [t for t in range(4) if labels[i, t] != -100]
        want += sum(float(((h[i, t].double() - target[i, t].double()) ** 2).sum()) / 5 for t in ts) / len(ts)
    want /= 3
    assert float(masked_activation_mse(h, target, mask)) == pytest.approx(want, rel=1e-6)
    vec = torch.randn(5, generator=g)  # a control vector broadcasts over batch and positions
    want_vec = masked_activation_mse(h, vec.expand(3, 4, 5), mask)
    assert float(masked_activation_mse(h, vec, mask)) == pytest.approx(float(want_vec), rel=1e-7)


@pytest.mark.parametrize("n,want", [(2, 1), (4, 2), (7, 3), (8, 7), (32, 7)])
def test_default_layer(n, want):
    assert default_layer(n) == want


def _trainer(tokenizer, tiny_splits, out, model=None, **kw):
    model = model if model is not None else sparse_model(tokenizer)
    return make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 8), qa(tiny_splits, "retain90", 8), out,
                        objective="rmu", **kw)


def test_reference_is_truncated_and_reproduces_starting_activations(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer, num_hidden_layers=4)
    trainer = _trainer(tokenizer, tiny_splits, tmp_path, model=model, rmu_layer=1, max_steps=1)
    batch = trainer._prepare_inputs(trainer.data_collator(trainer.train_dataset.rows[:4]))
    model.eval()
    with torch.no_grad(), _Capture(model.model.layers[1]) as cap:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    trainer._prepare_objective()
    ref = trainer.objective_ctx.ref_model
    assert len(ref.layers) == 2 and not hasattr(ref, "lm_head")  # blocks 0..1 of 4, no head
    assert all(not p.requires_grad for p in ref.parameters())
    with torch.no_grad(), _Capture(trainer.objective._ref_layer) as ref_cap:
        ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(ref_cap.value, cap.value)
    assert len(model.model.layers) == 4  # the model itself is untouched
    # the control vector: drawn from args.seed, norm c
    want = control_vector(model.config.hidden_size, 2.0, torch.Generator().manual_seed(0))
    assert torch.equal(trainer.objective_ctx.tensors[CONTROL], want)


def test_only_trainable_parameters_train_and_get_a_saliency(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pattern = r"model\.layers\.0\.mlp\.(up|down)_proj\.weight"
    trainer = _trainer(tokenizer, tiny_splits, tmp_path, model=model, rmu_trainable_params=pattern, max_steps=2,
                       sau_topk_scope="global")
    trainer.train()
    trainable = {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"}
    assert set(trainer.sau_state.selected) == trainable == set(trainer.saliency_targets())
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in trainable)
        assert torch.equal(p.detach(), before[n]) == (n not in trainable), n
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all({"forget_loss", "forget_nll", "retain_loss"} <= set(h) for h in logs)


def test_forget_term_moves_the_hidden_state_towards_the_control_vector(tokenizer, tiny_splits, tmp_path):
    trainer = _trainer(tokenizer, tiny_splits, tmp_path, max_steps=6, learning_rate=3e-3, sau=False)
    trainer.train()
    losses = [h["forget_loss"] for h in trainer.state.log_history if "forget_loss" in h]
    assert losses[-1] < 0.5 * losses[0]


def test_control_vector_comes_back_exactly_on_resume(tokenizer, tiny_splits, tmp_path):
    base = sparse_model(tokenizer).state_dict()
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2)
    first = _trainer(tokenizer, tiny_splits, tmp_path / "run", model=sparse_model(tokenizer, state_dict=base), **kw)
    first.train()
    saved = SAUState.load(tmp_path / "run" / "checkpoint-2").extra["objective." + CONTROL]
    assert torch.equal(saved, first.objective_ctx.tensors[CONTROL].cpu())
    # another seed would draw another vector: the resumed run must take the checkpoint's
    second = _trainer(tokenizer, tiny_splits, tmp_path / "run", model=sparse_model(tokenizer, state_dict=base),
                      **{**kw, "seed": 1})
    second.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert torch.equal(second.objective_ctx.tensors[CONTROL].cpu(), saved)
    assert not torch.equal(saved, control_vector(saved.numel(), 2.0, torch.Generator().manual_seed(1)))


def test_bad_layer_or_pattern_fails_before_training(tokenizer, tiny_splits, tmp_path):
    with pytest.raises(ValueError, match=r"rmu_layer=2 matches no decoder block: .* has 2 blocks \(0\.\.1\)"):
        _trainer(tokenizer, tiny_splits, tmp_path, rmu_layer=2)
    with pytest.raises(ValueError, match=r"rmu_trainable_params='model\\\\.layer\\\\.0\.\*' matches no parameter"):
        _trainer(tokenizer, tiny_splits, tmp_path, rmu_trainable_params=r"model\.layer\.0.*")
    with pytest.raises(ValueError, match=r"rmu_trainable_params='\(' is not a regular expression"):
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="rmu", rmu_trainable_params="(")
    with pytest.raises(ValueError, match=r"rmu_layer=-1 must be a block index >= 0"):
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="rmu", rmu_layer=-1)
    with pytest.raises(ValueError, match=r"retain_loss='embed_diff' is not allowed; choose one of \['nll', 'kl'\]"):
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="graddiff", retain_loss="embed_diff")


def test_unchanged_model_after_a_bad_pattern(tokenizer, tiny_splits, tmp_path):
    model = sparse_model(tokenizer)
    with pytest.raises(ValueError):
        _trainer(tokenizer, tiny_splits, tmp_path, model=model, rmu_trainable_params="nothing")
    assert all(p.requires_grad for p in model.parameters())
    assert sum(int((p == 0).sum()) for p in prunable_parameters(model).values()) > 0


def test_defaults_on_an_8b_shaped_model():
    """Llama-3.1-8B's shape on the meta device (no memory): block 7 of 32 by default; the embed-diff reference
    keeps the embeddings and blocks 0..7 only, 28% of the parameters."""
    from sau_trainer.modeling import build_llama
    from sau_trainer.objectives import OBJECTIVES

    with torch.device("meta"):
        model = build_llama("llama-3.1-8b")
    rmu = OBJECTIVES["rmu"](SAUConfig(output_dir="unused", report_to=[], objective="rmu"))
    rmu.bind_model(model)  # (the meta device cannot run the trace of reachable parameters: all matches train)
    assert rmu.layer_index == 7
    ref = rmu.build_reference(model)
    n_ref, n_all = (sum(p.numel() for p in m.parameters()) for m in (ref, model))
    assert len(ref.layers) == 8 and len(model.model.layers) == 32
    assert 0.27 < n_ref / n_all < 0.29
    assert rmu._ref_layer is ref.layers[7]


def test_parameters_after_the_hooked_block_stay_frozen(tokenizer, tiny_splits, tmp_path):
    """With the embed-diff retain term, RMU's loss cannot reach the blocks above the hooked one, the final norm or
    the head: they are frozen (no saliency, no selection; what DDP needs), the rest of '.*' trains."""
    model = sparse_model(tokenizer, num_hidden_layers=9)
    trainer = _trainer(tokenizer, tiny_splits, tmp_path, model=model, max_steps=1)
    assert trainer.objective.layer_index == 7
    want = {n for n, _ in model.named_parameters()
            if n == "model.embed_tokens.weight" or (n.startswith("model.layers.") and int(n.split(".")[2]) <= 7)}
    assert trainer.objective.trainable_names == want
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    assert set(trainer.saliency_targets()) == {n for n in prunable_parameters(model) if n in want}
    nll = _trainer(tokenizer, tiny_splits, tmp_path / "nll", model=sparse_model(tokenizer, num_hidden_layers=9),
                   retain_loss="nll", max_steps=1)  # an NLL retain term reaches every parameter
    assert nll.objective.trainable_names == {n for n, _ in model.named_parameters()}


def test_a_pattern_that_only_matches_parameters_after_the_hooked_block_is_refused(tokenizer, tiny_splits, tmp_path):
    with pytest.raises(ValueError, match=r"matches only parameters that RMU's loss cannot reach.*rmu_layer=0"):
        _trainer(tokenizer, tiny_splits, tmp_path, rmu_layer=0, rmu_trainable_params=r"model\.layers\.1\..*")


def test_trainable_pattern_enters_the_sau_settings(tmp_path):
    def settings(**kw):
        return SAUConfig(output_dir=str(tmp_path), report_to=[], **kw).sau_settings()

    assert settings(objective="rmu")["rmu_trainable_params"] == ".*"  # it decides which matrices get a G
    assert "rmu_trainable_params" not in settings(objective="graddiff")
    assert settings(objective="rmu", saliency_loss="objective")["rmu_steering_coeff"] == 2.0
