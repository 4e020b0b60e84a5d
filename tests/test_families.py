"""The family table: pruning, SAU and plain unlearning on tiny random models of every supported decoder family.

Each model is built from a config (offline, random weights). For every family: magnitude pruning at 50% (and 2:4)
gives exactly that sparsity per selection unit (per matrix, and per expert for fused mixture-of-experts tensors);
a few SAU and plain steps keep every pruned entry exactly zero; ``|G|`` is exactly ``ceil(k |S|)`` per unit;
the masks survive a save and reload; tied embeddings stay tied. Runs on the transformers floor (4.57, experts
as per-expert ``nn.Linear``) and on 5.x (fused expert tensors).
"""

from __future__ import annotations

import pytest
import torch
from sau_testing import make_trainer, qa
from torch import nn

from sau_trainer import SparsityMasks, prunable_parameters, prune_model
from sau_trainer.masks import prunable_weights
from sau_trainer.pruning.nm import check_nm
from sau_trainer.sau import topk_count

TOPK = 0.3
BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
MOE = dict(num_experts_per_tok=2)
FAMILIES = {
    "llama": dict(),
    "mistral": dict(),
    "qwen2": dict(),
    "qwen3": dict(head_dim=8),
    "gemma2": dict(head_dim=8),
    "phi3": dict(),
    "olmo2": dict(),
    "gemma3": dict(head_dim=8, sliding_window=16),  # the composite Gemma3ForConditionalGeneration
    "qwen3_moe": dict(MOE, num_experts=4, moe_intermediate_size=16, head_dim=8, decoder_sparse_step=1,
                      mlp_only_layers=[]),
    "mixtral": dict(MOE, num_local_experts=4),
    "olmoe": dict(MOE, num_experts=4),
    "gpt_oss": dict(MOE, num_local_experts=4, head_dim=8, layer_types=["sliding_attention", "full_attention"],
                    sliding_window=16),
}
MOE_FAMILIES = {"qwen3_moe", "mixtral", "olmoe", "gpt_oss"}


def build(family: str, tokenizer, seed: int = 0) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if family == "gemma3":
        from transformers import Gemma3Config

        n = len(tokenizer)
        config = Gemma3Config(
            text_config={**BASE, **FAMILIES[family], **special, "vocab_size": n + 3},
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                               image_size=28, patch_size=14),
            mm_tokens_per_image=4, boi_token_index=n, eoi_token_index=n + 1, image_token_index=n + 2,
        )
    else:
        config = AutoConfig.for_model(family, **BASE, **FAMILIES[family], **special)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def units(name: str, tensor: torch.Tensor, model) -> torch.Tensor:
    """`tensor` (a parameter's shape) as its selection units ``[units, out, in]``."""
    return prunable_weights(model)[name].layout.units(tensor)


@pytest.fixture(scope="module")
def forget(tiny_splits):
    return qa(tiny_splits, "forget10", 8)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_prune_unlearn_reload(family, tokenizer, forget, tmp_path):
    model = build(family, tokenizer)
    weights = prunable_weights(model)
    names = list(weights)
    n_layers = BASE["num_hidden_layers"]
    assert names and all(".layers." in n for n in names)
    assert not any("embed" in n or "lm_head" in n or "norm" in n or n.endswith("bias") for n in names)
    if family == "gemma3":  # only the language model is prunable: no vision tower, no projector
        assert all(n.startswith("model.language_model.layers.") for n in names)
        assert len(names) == 7 * n_layers
    if family in MOE_FAMILIES:
        experts = [n for n, w in weights.items() if w.expert]
        assert experts, "expert weights must be prunable"
        assert not any(n.rsplit(".", 2)[-2] in ("gate", "router") for n in names), "routers stay dense"
        fused = [n for n, w in weights.items() if w.layout.experts]
        for n in fused:
            assert prunable_parameters(model)[n].dim() == 3 and not n.endswith(".weight")
    tied = model.config.get_text_config().tie_word_embeddings if hasattr(model.config, "get_text_config") else False
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    result = prune_model(model, "magnitude", sparsity=0.5, progress=False)
    params = prunable_parameters(model)
    for n, p in params.items():
        keep = units(n, result.masks.get(n), model)
        per_unit = 1 - keep.reshape(keep.shape[0], -1).float().mean(1)
        assert torch.equal(per_unit, torch.full_like(per_unit, 0.5)), (n, per_unit)
        assert torch.equal(p != 0, result.masks.get(n))
    masks = result.masks

    trainer = make_trainer(model, tokenizer, forget, None, tmp_path / "sau", objective="ga", sau=True, sau_topk=TOPK,
                           max_steps=3, learning_rate=1e-2, per_device_train_batch_size=4)
    before = {n: p.detach().clone() for n, p in params.items()}
    trainer.train()
    assert masks.count_nonzero_pruned(model) == 0
    changed = sum(int((params[n] != before[n]).sum()) for n in params)
    assert changed > 0
    for n in params:
        g, m = units(n, trainer.sau_state.mask(n), model), units(n, masks.get(n), model)
        assert g.shape == units(n, params[n], model).shape
        assert not (g & ~m).any(), "G must imply M"
        for e in range(g.shape[0]):
            assert int(g[e].sum()) == topk_count(int(m[e].sum()), TOPK), (n, e)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    plain = make_trainer(model, tokenizer, forget, None, tmp_path / "plain", objective="ga", sau=False, max_steps=2,
                         learning_rate=1e-2, optim="adamw_torch", weight_decay=0.1)
    plain.train()
    assert masks.count_nonzero_pruned(model) == 0

    path = masks.save(tmp_path)
    again = SparsityMasks.load(path, model)
    assert again.names == list(params)  # model order, whatever order the file holds
    for n in params:
        assert torch.equal(again.get(n), masks.get(n))


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3_moe", "gpt_oss"])
def test_family_two_four(family, tokenizer):
    model = build(family, tokenizer, seed=1)
    result = prune_model(model, "magnitude", sparsity=None, structure="2:4", progress=False)
    assert result.sparsity == 0.5
    for n in result.masks.names:
        keep = units(n, result.masks.get(n), model)  # [units, out, in]: 2 of every 4 inputs of each output row
        assert check_nm(keep.reshape(-1, keep.shape[-1]), 2, 4), n


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_pruning_refuses_experts(method, tokenizer):
    model = build("qwen3_moe", tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="expert.*magnitude"):
        prune_model(model, method, sparsity=0.5, calibration=torch.randint(3, 100, (2, 16)), progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "nothing may change before the error"


def test_fused_experts_selection_units_follow_orientation():
    """GPT-OSS stores experts ``[E, in, out]``: a row is an output row, i.e. a column of each stored matrix."""
    from sau_trainer.masks import Layout
    from sau_trainer.sau import redistribution_weights, select_topk

    torch.manual_seed(0)
    e, d_in, d_out = 3, 8, 4
    s = torch.rand(e, d_in, d_out)
    alive = torch.rand(e, d_in, d_out) > 0.5
    layout = Layout(experts=True, transposed=True)
    g = select_topk(s, alive, 0.5, "row", layout)
    for i in range(e):
        for r in range(d_out):  # output row r of expert i is s[i, :, r]
            col_alive = alive[i, :, r]
            assert int(g[i, :, r].sum()) == topk_count(int(col_alive.sum()), 0.5)
            if col_alive.any():
                chosen = s[i, :, r][g[i, :, r]]
                rest = s[i, :, r][col_alive & ~g[i, :, r]]
                assert rest.numel() == 0 or chosen.min() >= rest.max()
    w = redistribution_weights(s, alive, g, 0.1, "row", layout)
    assert w.shape == (e, 1, d_out)
    s64 = s.double()
    for i in range(e):
        for r in range(d_out):
            i_p = float((s64[i, :, r] * ~alive[i, :, r]).sum())
            i_g = float((s64[i, :, r] * g[i, :, r]).sum())
            expected = 1 + 0.1 * i_p / i_g if i_g > 0 else 1.0
            assert abs(float(w[i, 0, r]) - expected) < 1e-6
    wm = redistribution_weights(s, alive, select_topk(s, alive, 0.5, "matrix", layout), 0.1, "matrix", layout)
    assert wm.shape == (e, 1, 1)


def test_unknown_3d_parameter_is_named(tokenizer):
    model = build("llama", tokenizer)
    model.model.layers[0].mlp.register_parameter("mystery", nn.Parameter(torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.mystery"):
        prunable_parameters(model)


def test_meta_and_quantized_weights_are_refused(tokenizer):
    model = build("llama", tokenizer)
    layer = model.model.layers[0].self_attn.q_proj
    layer.weight = nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"q_proj\.weight.*int8"):
        prune_model(model, "magnitude", sparsity=0.5, progress=False)
    with torch.device("meta"):
        meta = build("llama", tokenizer)
    with pytest.raises(ValueError, match="meta device"):
        SparsityMasks.from_model(meta)
