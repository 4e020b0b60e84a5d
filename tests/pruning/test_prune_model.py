"""prune_model on small random Llamas: exact counts, N:M patterns, dense parts untouched, bad input."""

import math

import pytest
import torch
from prune_helpers import (
    assert_states_identical,
    dense_state,
    full_state,
    random_texts,
    tiny_model,
    word_tokenizer,
)

from sau_trainer.masks import SparsityMasks, prunable_parameters
from sau_trainer.pruning import PRUNERS, prune_model
from sau_trainer.pruning.nm import check_nm, num_pruned

CALIB = torch.randint(0, 128, (12, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", sorted(PRUNERS))
@pytest.mark.parametrize("structure,sparsity", [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", 0.5),
                                                ("4:8", None), ("1:4", 0.75)])
def test_exact_sparsity_and_dense_untouched(method, structure, sparsity):
    model = tiny_model()
    dense = dense_state(model)
    result = prune_model(model, method, sparsity, structure, calibration=CALIB, progress=False)
    params = prunable_parameters(model)
    assert list(result.masks.names) == list(params) and len(params) == 14  # 7 linears x 2 layers
    target = 1 - int(structure[0]) / int(structure[2]) if structure != "unstructured" else sparsity
    assert result.target_sparsity == pytest.approx(target)
    for name, p in params.items():
        keep = result.masks.get(name)
        assert torch.equal(keep, p != 0), name  # masks are exactly the model's zeros
        if structure != "unstructured":
            n, m = map(int, structure.split(":"))
            assert check_nm(p != 0, n, m), name
        elif method == "wanda":  # Wanda's comparison group is the output row
            assert ((p == 0).sum(1) == num_pruned(p.shape[1], sparsity)).all(), name
        else:
            assert int((p == 0).sum()) == num_pruned(p.numel(), sparsity), name
        assert result.report[name]["sparsity"] == pytest.approx(float((p == 0).float().mean()))
    assert_states_identical(model, dense)  # embeddings, lm_head, norms: bit-identical
    assert SparsityMasks.from_model(model).per_matrix_sparsity() == result.masks.per_matrix_sparsity()


def test_zero_sparsity_changes_nothing_for_mask_only_methods():
    for method in ("magnitude", "wanda"):
        model = tiny_model()
        before = full_state(model)
        result = prune_model(model, method, 0.0, calibration=CALIB, progress=False)
        assert result.sparsity == 0.0
        assert_states_identical(model, before)


def test_calibration_inputs_texts_dataset_tensor_dict():
    import datasets

    tok = word_tokenizer()
    texts = ["", "   "] + random_texts(10, lo=5, hi=30)
    model = tiny_model(vocab_size=len(tok))
    r1 = prune_model(model, "wanda", 0.5, calibration=texts, tokenizer=tok, num_samples=6, seq_len=8,
                     progress=False)
    assert r1.calibration["kind"] == "texts"
    assert r1.calibration["num_samples"] == 6  # blank texts skipped, then capped
    assert r1.calibration["num_tokens"] == sum(min(len(tok(t)["input_ids"]), 8) for t in texts[2:8])

    model2 = tiny_model(vocab_size=len(tok))
    ds = datasets.Dataset.from_dict({"text": texts, "other": list(range(len(texts)))})
    r2 = prune_model(model2, "wanda", 0.5, calibration=ds, tokenizer=tok, num_samples=6, seq_len=8, progress=False)
    assert r2.calibration["token_ids_sha256"] == r1.calibration["token_ids_sha256"]
    for name in r1.masks.names:
        assert torch.equal(r1.masks.get(name), r2.masks.get(name))

    # token ids: a tensor uses every token; a dict's attention mask drops padding
    ids = torch.randint(4, len(tok), (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    r3 = prune_model(tiny_model(vocab_size=len(tok)), "sparsegpt", 0.5, calibration={"input_ids": ids,
                     "attention_mask": mask}, progress=False)
    assert r3.calibration["num_tokens"] == 26
    r4 = prune_model(tiny_model(vocab_size=len(tok)), "sparsegpt", 0.5, calibration=ids, seq_len=4, progress=False)
    assert r4.calibration["num_tokens"] == 12


# --------------------------------------------------------------------------- bad input
TOK = object()  # replaced by a real tokenizer inside the test

BAD_CALLS = [
    (dict(method="magnitude", sparsity=1.0), "outside \\[0, 1\\)"),
    (dict(method="magnitude", sparsity=-0.1), "outside \\[0, 1\\)"),
    (dict(method="wanda", sparsity=math.nan, calibration=CALIB), "outside \\[0, 1\\)"),
    (dict(method="sparsegpt", sparsity=1.5, calibration=CALIB), "outside \\[0, 1\\)"),
    (dict(method="magnitude", sparsity=None, structure="2:3"), "multiple of 3.*in_features=64"),
    (dict(method="sparsegpt", sparsity=None, structure="3:5", calibration=CALIB), "multiple of 5"),
    (dict(method="magnitude", structure="2:4", sparsity=0.6), "implies sparsity 0.5"),
    (dict(method="magnitude", structure="4x8"), "not understood"),
    (dict(method="wanda"), "wanda needs calibration data"),
    (dict(method="sparsegpt"), "sparsegpt needs calibration data"),
    (dict(method="wanda", calibration=["", "  \n"], tokenizer=TOK), "no usable tokens"),
    (dict(method="sparsegpt", calibration=torch.zeros(4, 0, dtype=torch.long)), "no usable tokens"),
    (dict(method="wanda", calibration={"input_ids": CALIB, "attention_mask": torch.zeros_like(CALIB)}),
     "no usable tokens"),
    (dict(method="wanda", calibration=["some text"]), "need a tokenizer"),
    (dict(method="wanda", calibration="some text", tokenizer=TOK), "single string"),
    (dict(method="sparsegpt", calibration=CALIB + 1000), "vocabulary has 128"),
    (dict(method="sparsegpt", calibration=CALIB.float()), "must be integers"),
    (dict(method="obs"), "Unknown pruning method 'obs'"),
]


@pytest.mark.parametrize("kwargs,match", BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_bad_input_raises_before_touching_weights(kwargs, match):
    kwargs = {k: (word_tokenizer() if v is TOK else v) for k, v in kwargs.items()}
    model = tiny_model()
    before = full_state(model)
    method = kwargs.pop("method")
    with pytest.raises(ValueError, match=match):
        prune_model(model, method, progress=False, **kwargs)
    assert_states_identical(model, before)

