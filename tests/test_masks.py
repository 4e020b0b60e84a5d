import math

import pytest
import torch
from sau_testing import sparse_model
from torch import nn

from sau_trainer.masks import SparsityMasks, decoder_layers, pack_bool, prunable_parameters, unpack_bool
from sau_trainer.modeling import build_llama


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (13, 5), (64, 33)])
def test_pack_roundtrip_and_size(shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) > 0.4
    packed = pack_bool(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_bool(packed, shape), mask)


def _sparse_llama(sparsity=0.5, seed=0):
    return sparse_model(None, sparsity=sparsity, seed=seed, vocab_size=97)


def test_prunable_parameters_are_decoder_linears_only():
    model = build_llama("tiny", vocab_size=97)
    names = list(prunable_parameters(model))
    assert len(names) == 7 * model.config.num_hidden_layers
    assert all(n.startswith("model.layers.") and n.endswith("_proj.weight") for n in names)
    assert len(decoder_layers(model)) == model.config.num_hidden_layers


def test_from_model_counts_zeros_and_roundtrips_through_file(tmp_path):
    model = _sparse_llama()
    masks = SparsityMasks.from_model(model)
    params = prunable_parameters(model)
    for name, p in params.items():
        assert torch.equal(masks.get(name), p != 0)
    total = sum(p.numel() for p in params.values())
    zeros = sum(int((p == 0).sum()) for p in params.values())
    assert masks.sparsity() == pytest.approx(zeros / total, abs=0)
    assert masks.nbytes() == sum(math.ceil(p.numel() / 8) for p in params.values())  # 1 bit per weight
    path = masks.save(tmp_path)
    loaded = SparsityMasks.load(path, model)
    assert all(torch.equal(loaded.get(n), masks.get(n)) for n in params)


def test_apply_zeroes_pruned_entries_only():
    model = _sparse_llama()
    masks = SparsityMasks.from_model(model)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            p.add_(1.0)
    masks.apply_(model)
    for name, p in prunable_parameters(model).items():
        m = masks.get(name)
        assert (p[~m] == 0).all() and (p[m] != 0).all()


def test_mask_shape_mismatch_is_a_clear_error(tmp_path):
    masks = SparsityMasks.from_model(_sparse_llama())
    masks.save(tmp_path)
    other = build_llama("tiny", vocab_size=97, hidden_size=64, intermediate_size=128)
    with pytest.raises(ValueError, match="has shape .* different model"):
        SparsityMasks.load(tmp_path, other)


def test_model_without_prunable_matrices_is_rejected():
    class NotAnLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="no prunable matrices"):
        SparsityMasks.from_model(NotAnLM())


def test_from_model_packs_one_matrix_at_a_time(monkeypatch):
    """Inferring masks holds one unpacked bool matrix at a time (at 8B, all at once would be 7 GB).

    Every bool mask handed out must be freed before the next one is asked for.
    """
    import weakref

    from sau_trainer.training import masks as masks_module  # where SparsityMasks reads _NonzeroMasks

    handed_out = []

    class Watched(masks_module._NonzeroMasks):
        def __getitem__(self, name):
            alive = [r for r in handed_out if r() is not None]
            assert not alive, f"{len(alive)} earlier bool masks still alive when {name} was asked for"
            m = super().__getitem__(name)
            handed_out.append(weakref.ref(m))
            return m

    monkeypatch.setattr(masks_module, "_NonzeroMasks", Watched)
    model = _sparse_llama()
    masks = SparsityMasks.from_model(model)
    assert len(handed_out) == len(prunable_parameters(model)) == len(masks)


def test_load_keeps_model_order(tmp_path):
    """safetensors sorts keys (layers.1, layers.10, layers.2); loading with the model restores model order."""
    model = build_llama({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 11,
                         "num_attention_heads": 2, "num_key_value_heads": 2}, vocab_size=31)
    masks = SparsityMasks.dense(model)
    masks.save(tmp_path)
    assert SparsityMasks.load(tmp_path).names != list(prunable_parameters(model))  # the file's sorted order
    assert SparsityMasks.load(tmp_path, model).names == list(prunable_parameters(model))


def test_global_scope_ties_follow_model_order_whatever_the_file_order(tmp_path, tokenizer, tiny_splits, monkeypatch):
    """With equal saliency everywhere, global top-k takes the first matrices in model order, even when the
    masks come from a file whose keys are sorted (layers.1, layers.10, layers.2, ...)."""
    from sau_testing import make_trainer, qa

    from sau_trainer.callbacks import SaliencyCallback
    from sau_trainer.sau import topk_count

    model = build_llama({"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 11,
                         "num_attention_heads": 2, "num_key_value_heads": 2}, tokenizer)
    SparsityMasks.dense(model).save(tmp_path)
    trainer = make_trainer(model, tokenizer, qa(tiny_splits, "forget10", 4), None, tmp_path / "run", objective="ga",
                           sau_topk_scope="global", sau_topk=0.5)
    trainer.sparsity_masks = SparsityMasks.load(tmp_path)  # the file's (sorted) order, as a user might pass it
    monkeypatch.setattr(SaliencyCallback, "saliency", lambda self: {
        n: torch.ones(p.shape) for n, p in self.trainer.saliency_targets().items()})
    state = SaliencyCallback(trainer).build_state()
    params = prunable_parameters(model)
    quota = topk_count(sum(p.numel() for p in params.values()), 0.5)
    taken = 0
    for name, p in params.items():  # model order: full matrices first, then at most one partial, then none
        want = min(p.numel(), max(quota - taken, 0))
        assert int(state.mask(name).sum()) == want, name
        taken += want
