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
