"""Robustness of forgetting, the parts without a trained model: quantizers against hand-computed values, attack
names, the relearning set and the rows it is judged on, and the planning of attack stages (stand-in stages)."""

import math

import pytest
import torch

from sau_trainer.robustness import (
    ATTACKS,
    bnb_status,
    heldout_splits,
    parse_attack,
    quantize_bnb,
    quantize_model,
    quantize_rtn,
    relearn_selection,
    restrict_per_example,
)


# ----------------------------------------------------------------------------------------- quantizers
def test_rtn_int4_by_hand():
    w = torch.tensor([[0.0, 1.25, -3.5, 0.2, 1.0, 0.0, 0.0, 0.1],
                      [0.0, 0.0, 0.0, 0.0, -0.3, 0.6, 0.0, 0.9]])
    # group 1 of row 0: absmax 3.5, scale 0.5: 1.25/0.5 = 2.5 -> 2 (half to even), 0.2/0.5 = 0.4 -> 0
    # group 2 of row 0: absmax 1.0, scale 1/7: 0.1*7 = 0.7 -> 1
    # group 1 of row 1: all zero -> zero (scale 0); group 2: absmax 0.9, scale 0.9/7: -0.3 -> -2.33 -> -2,
    #   0.6 -> 4.67 -> 5
    s = 0.9 / 7
    expected = torch.tensor([[0.0, 1.0, -3.5, 0.0, 1.0, 0.0, 0.0, 1 / 7],
                             [0.0, 0.0, 0.0, 0.0, -2 * s, 5 * s, 0.0, 7 * s]], dtype=torch.float64)
    out = quantize_rtn(w, bits=4, group_size=4)
    assert out.dtype == torch.float32 and out.shape == w.shape
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-6)
    assert (out[w == 0] == 0).all()


def test_rtn_int8_by_hand_with_a_short_last_group_and_the_default_group_size():
    w = torch.tensor([[0.0, 127.0, -63.5, 1.0, 0.5, 2.0]])
    # groups of 4 then 2: [0, 127, -63.5, 1] scale 1 -> -63.5 rounds to -64 (half to even);
    # [0.5, 2.0] scale 2/127: 0.5 * 63.5 = 31.75 -> 32 -> 32 * 2 / 127
    out = quantize_rtn(w, bits=8, group_size=4)
    torch.testing.assert_close(out.double(), torch.tensor([[0.0, 127.0, -64.0, 1.0, 64 / 127, 2.0]],
                                                          dtype=torch.float64), rtol=0, atol=1e-6)
    big = torch.randn(3, 300, generator=torch.Generator().manual_seed(0))
    big[:, ::3] = 0
    q8, q4 = quantize_rtn(big, 8), quantize_rtn(big, 4)
    # default groups of 128: every group's error is at most half its scale, zeros exact
    for q, qmax in ((q8, 127), (q4, 7)):
        for g in range(0, 300, 128):
            block, err = big[:, g:g + 128], (q - big)[:, g:g + 128]
            assert (err.abs() <= block.abs().amax(dim=1, keepdim=True) / qmax / 2 + 1e-6).all()
        assert (q[:, ::3] == 0).all()
    assert (q8 - big).abs().mean() < (q4 - big).abs().mean() / 10


def test_rtn_rejects_bad_input_and_keeps_dtype():
    with pytest.raises(ValueError, match="matrix"):
        quantize_rtn(torch.ones(5), 4)
    with pytest.raises(ValueError, match="bits"):
        quantize_rtn(torch.ones(2, 2), 1)
    w = torch.randn(2, 3, 256, dtype=torch.bfloat16)  # a stack of matrices (fused experts)
    assert quantize_rtn(w, 4).dtype == torch.bfloat16 and quantize_rtn(w, 4).shape == w.shape


@pytest.mark.skipif(not bnb_status()[0], reason=bnb_status()[1])
def test_bitsandbytes_weights_keep_zeros_and_their_error_bounds():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=g)
    w[:, ::2] = 0
    nf4, int8 = quantize_bnb(w, "nf4"), quantize_bnb(w, "int8")
    assert (nf4[:, ::2] == 0).all() and (int8[:, ::2] == 0).all()
    row_scale = w.abs().amax(dim=1, keepdim=True)
    assert ((int8 - w).abs() <= row_scale / 127 / 2 + 2e-3 * row_scale).all()  # int8 rows (+ fp16 rounding)
    assert (nf4 - w).abs().mean() > (int8 - w).abs().mean() * 5
    with pytest.raises(ValueError, match="nf4"):
        quantize_bnb(w, "fp8")


def test_quantize_model_keeps_every_zero(tokenizer):
    from sau_testing import sparse_model

    from sau_trainer.masks import prunable_parameters

    model = sparse_model(tokenizer, sparsity=0.5)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    emb = model.get_input_embeddings().weight.detach().clone()
    info = quantize_model(model, parse_attack("quant-int4"))
    assert info["zeros_kept"] and info["matrices"] == len(before)
    for n, p in prunable_parameters(model).items():
        assert (p[before[n] == 0] == 0).all(), n
        torch.testing.assert_close(p.detach(), quantize_rtn(before[n], 4).masked_fill(before[n] == 0, 0))
    assert torch.equal(model.get_input_embeddings().weight, emb)  # only the prunable matrices


# ----------------------------------------------------------------------------------------- names
def test_attack_names_are_parsed_or_refused_with_the_accepted_ones():
    assert parse_attack("quant-int4").bits == 4 and parse_attack("bnb-nf4").bnb_type == "nf4"
    a = parse_attack("prune-magnitude-50")
    assert (a.kind, a.method, a.sparsity, a.structure, a.prune_id) == ("prune", "magnitude", 0.5, "unstructured",
                                                                      "magnitude-50")
    b = parse_attack("prune-wanda-2of4")
    assert (b.structure, b.sparsity, b.prune_id) == ("2:4", None, "wanda-2of4")
    assert set(ATTACKS) == {"quant-int8", "quant-int4", "bnb-8bit", "bnb-nf4", "relearn"}
    with pytest.raises(ValueError, match="did you mean 'quant-int4'"):
        parse_attack("quant-in4")
    with pytest.raises(ValueError, match="not a pruning method"):
        parse_attack("prune-random-50")
    with pytest.raises(ValueError, match="0 < N < M"):
        parse_attack("prune-wanda-4of2")


# ----------------------------------------------------------------------------------------- relearning data
def test_relearning_takes_ten_percent_of_the_forget_set_and_is_judged_on_the_rest(tiny_splits):
    forget = tiny_splits["forget10"]
    picked = relearn_selection(forget, 0.1, seed=0)
    assert len(picked) == math.ceil(0.1 * len(forget)) and picked == sorted(set(picked))
    assert picked == relearn_selection(forget, 0.1, seed=0) != relearn_selection(forget, 0.1, seed=1)
    assert len(relearn_selection(forget[:3], 0.1)) == 1  # at least one row
    chosen = [forget[i] for i in picked]
    judged, dropped = heldout_splits(tiny_splits, chosen)
    relearned = {r["question"] for r in chosen}
    assert dropped["forget10"] == dropped["forget10_perturbed"] == len(picked)  # (and "full", which has them too)
    for name in ("forget10", "forget10_perturbed"):
        assert not relearned & {r["question"] for r in judged[name]}
        assert len(judged[name]) == len(tiny_splits[name]) - len(picked)
    for name in ("retain_perturbed", "real_authors_perturbed", "world_facts_perturbed", "holdout10"):
        assert judged[name] == tiny_splits[name]  # nothing else is touched
    with pytest.raises(ValueError, match="fraction"):
        relearn_selection(forget, 0.0)
    with pytest.raises(ValueError, match="nothing is left"):
        heldout_splits({"forget10": forget}, forget)


def test_text_benchmarks_drop_the_relearned_texts_and_the_prompts_cut_from_them():
    splits = {"raw/forget": [{"text": "Alpha one. Alpha two."}, {"text": "Beta one. Beta two."}],
              "verbmem/forget": [{"prompt": "Alpha one.", "gt": " Alpha two."}, {"prompt": "Beta one.", "gt": "x"}],
              "knowmem/forget_qa": [{"question": "What is alpha?", "answer": "one"}]}
    judged, dropped = heldout_splits(splits, [splits["raw/forget"][0]])
    assert judged["raw/forget"] == [splits["raw/forget"][1]]
    assert judged["verbmem/forget"] == [splits["verbmem/forget"][1]]
    assert judged["knowmem/forget_qa"] == splits["knowmem/forget_qa"] and dropped == {"raw/forget": 1,
                                                                                      "verbmem/forget": 1}


def test_the_retain_reference_is_cut_to_the_judged_questions():
    results = {"summary": {}, "per_example": {"forget": {"question": ["a", "b", "c"], "log_truth_ratio": [1, 2, 3],
                                                         "nll_perturbed": [[1], [2], [3]]},
                                              "retain": {"question": ["r"]}}}
    out = restrict_per_example(results, {"c", "a"})
    assert out["per_example"]["forget"] == {"question": ["a", "c"], "log_truth_ratio": [1, 3],
                                            "nll_perturbed": [[1], [3]]}
    assert results["per_example"]["forget"]["question"] == ["a", "b", "c"]  # a copy
