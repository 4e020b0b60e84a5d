"""Saving a pruned model and loading it back; perplexity."""

import json
import math
import os

import pytest
import torch
from prune_helpers import random_texts, tiny_model, word_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from sau_trainer.masks import MASKS_FILE, SparsityMasks, prunable_parameters
from sau_trainer.pruning import (
    SPARSITY_FILE,
    load_sparsity_metadata,
    perplexity,
    prune_model,
    save_sparse_model,
)


@pytest.mark.parametrize("method,structure", [("wanda", "2:4"), ("sparsegpt", "unstructured")])
def test_save_and_load_give_back_the_same_masks(tmp_path, method, structure):
    tok = word_tokenizer()
    model = tiny_model(vocab_size=len(tok))
    texts = random_texts(8)
    result = prune_model(model, method, 0.5, structure, calibration=texts, tokenizer=tok, seq_len=16,
                         progress=False)
    out = save_sparse_model(model, tok, tmp_path / "sparse", result)
    files = set(os.listdir(out))
    assert {SPARSITY_FILE, MASKS_FILE, "config.json", "model.safetensors", "tokenizer.json"} <= files

    meta = load_sparsity_metadata(out)
    assert meta["version"] == 1 and meta["method"] == method and meta["structure"] == structure
    assert meta["target_sparsity"] == 0.5
    assert meta["measured_sparsity"] == pytest.approx(0.5) and meta["measured_sparsity_weights"] == pytest.approx(0.5)
    assert meta["per_matrix_sparsity"] == pytest.approx(result.masks.per_matrix_sparsity())
    assert meta["calibration"]["num_samples"] == 8 and meta["calibration"]["kind"] == "texts"
    assert len(meta["settings_sha256"]) == 64
    json.dumps(meta)

    loaded = AutoModelForCausalLM.from_pretrained(out)
    from_file = SparsityMasks.load(out, model=loaded)
    from_zeros = SparsityMasks.from_model(loaded)
    for name in prunable_parameters(loaded):
        assert torch.equal(from_file.get(name), result.masks.get(name))
        assert torch.equal(from_zeros.get(name), result.masks.get(name))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert AutoTokenizer.from_pretrained(out)("the cat")["input_ids"] == tok("the cat")["input_ids"]


def test_perplexity_matches_the_model_loss_and_ignores_padding():
    tok = word_tokenizer()
    model = tiny_model(vocab_size=len(tok))
    texts = random_texts(7, seed=5, lo=2, hi=30)
    ids = [torch.tensor(tok(t)["input_ids"]) for t in texts]
    with torch.no_grad():  # reference: token-weighted mean of the model's own loss, one sequence at a time
        nll = sum(float(model(input_ids=x[None], labels=x[None]).loss) * (len(x) - 1) for x in ids)
    expected = math.exp(nll / sum(len(x) - 1 for x in ids))
    assert perplexity(model, texts, tok, batch_size=1) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, texts, tok, batch_size=4) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, [x.tolist() for x in ids], batch_size=3) == pytest.approx(expected, rel=1e-4)
    # a long sequence is cut into windows of seq_len tokens
    long = torch.cat(ids)
    windows = [w for w in long.split(10) if len(w) > 1]
    with torch.no_grad():
        nll = sum(float(model(input_ids=w[None], labels=w[None]).loss) * (len(w) - 1) for w in windows)
    assert perplexity(model, long[None], seq_len=10) == pytest.approx(math.exp(nll / sum(len(w) - 1 for w in windows)),
                                                                    rel=1e-4)
    with pytest.raises(ValueError, match="tokenizer"):
        perplexity(model, texts)


def test_perplexity_scores_only_continuations_and_labels():
    tok = word_tokenizer()
    model = tiny_model(vocab_size=len(tok))
    pairs = [("who wrote the book", "the fox"), ("where is the cat", "on a mat big")]
    total, count = 0.0, 0
    with torch.no_grad():
        for ctx, cont in pairs:
            c = tok(ctx)["input_ids"]
            a = tok(cont, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([c + a])
            labels = torch.tensor([[-100] * len(c) + a])
            total += float(model(input_ids=ids, labels=labels).loss) * len(a)
            count += len(a)
    expected = math.exp(total / count)
    assert perplexity(model, pairs, tok) == pytest.approx(expected, rel=1e-4)
    rows = [{"input_ids": tok(c)["input_ids"] + tok(a, add_special_tokens=False)["input_ids"],
             "labels": [-100] * len(tok(c)["input_ids"]) + tok(a, add_special_tokens=False)["input_ids"]}
            for c, a in pairs]
    assert perplexity(model, rows, batch_size=1) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, pairs, tok) != pytest.approx(perplexity(model, [c + " " + a for c, a in pairs], tok))
