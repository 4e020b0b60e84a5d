"""The batched TOFU evaluator on small random models (fast): batching, limits, degenerate models."""

import math

import pytest
import torch

from sau_trainer.data.synthetic import generate_benchmark
from sau_trainer.data.tofu import evaluation_splits
from sau_trainer.evaluation import evaluate_tofu, forget_quality_from_results

SPLITS = evaluation_splits("forget10")


@pytest.fixture(scope="module")
def bench():
    return generate_benchmark("tiny", 0)


@pytest.fixture(scope="module")
def small(bench):
    """A few rows of each evaluation split, to keep the random-model tests fast."""
    return {s: bench[s][:6] for s in SPLITS}


@pytest.fixture(scope="module")
def tok(bench):
    from sau_trainer.data.tokenizer import train_tokenizer

    texts = [t for rows in bench.values() for r in rows for t in (r["question"], r["answer"])]
    return train_tokenizer(texts, vocab_size=400)


def _model(tok, seed=0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    fields.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**fields)).eval()


def _finite(summary):
    return all(v is None or math.isfinite(v) for v in summary.values())


def test_batched_equals_one_at_a_time(tok, small):
    model = _model(tok)
    rows = {s: r[:4] for s, r in small.items()}
    a = evaluate_tofu(model, tok, rows, batch_size=7, max_new_tokens=5, show_progress=False)
    b = evaluate_tofu(model, tok, rows, batch_size=1, max_new_tokens=5, show_progress=False)
    for name, ex in a["per_example"].items():
        other = b["per_example"][name]
        assert ex["generation"] == other["generation"], name
        assert ex["question"] == other["question"]
        for key in ("nll_answer", "nll_reference", "probability", "log_truth_ratio", "extraction_strength"):
            assert ex[key] == pytest.approx(other[key], rel=1e-5, abs=1e-6), (name, key)
        assert [x for g in ex["nll_perturbed"] for x in g] == pytest.approx(
            [x for g in other["nll_perturbed"] for x in g], rel=1e-5)
    assert a["summary"].pop("forget_quality") is b["summary"].pop("forget_quality") is None
    assert a["summary"] == pytest.approx(b["summary"], rel=1e-5, abs=1e-6)
    assert any(g for g in a["per_example"]["forget"]["generation"])  # it did generate something


def test_layout_of_the_evaluation(tok, small):
    res = evaluate_tofu(_model(tok), tok, small, batch_size=4, max_new_tokens=3, show_progress=False)
    assert set(res["per_example"]) == {"forget", "retain", "real_authors", "world_facts"}
    assert list(res["summary"])[:5] == ["forget_quality", "model_utility", "forget_rouge", "forget_truth_ratio",
                                        "forget_probability"]
    assert res["summary"]["forget_quality"] is None  # no retain results
    wf = res["per_example"]["world_facts"]
    assert wf["nll_reference"] == wf["nll_answer"]  # the answer stands in for the paraphrase
    assert all(len(g) == 3 for g in wf["nll_perturbed"])
    assert all(len(g) == 5 for g in res["per_example"]["forget"]["nll_perturbed"])
    # normalised probability on the general sets sums to 1 with the perturbed ones
    p = wf["probability"][0]
    expected = math.exp(-wf["nll_answer"][0]) / (math.exp(-wf["nll_answer"][0]) + sum(
        math.exp(-x) for x in wf["nll_perturbed"][0]))
    assert p == pytest.approx(expected, rel=1e-9)


def test_model_against_itself_has_forget_quality_one(tok, small):
    model = _model(tok, seed=1)
    res = evaluate_tofu(model, tok, small, batch_size=8, max_new_tokens=2, show_progress=False)
    again = evaluate_tofu(model, tok, small, batch_size=8, max_new_tokens=2, show_progress=False, retain_results=res)
    assert again["summary"]["forget_quality"] == 1.0
    other = evaluate_tofu(_model(tok, seed=2), tok, small, batch_size=8, max_new_tokens=2, show_progress=False)
    assert 0.0 < forget_quality_from_results(other, res) <= 1.0
    with pytest.raises(ValueError, match="other forget questions"):
        shifted = {**small, "forget10_perturbed": small["retain_perturbed"]}
        forget_quality_from_results(
            evaluate_tofu(model, tok, shifted, batch_size=8, max_new_tokens=1, show_progress=False), res)


def test_generation_never_exceeds_model_max_length(tok, bench, caplog):
    limit = 48
    model = _model(tok, max_position_embeddings=limit)
    seen = []
    original = model.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(out.shape[1])
        return out

    model.generate = spy
    rows = {s: bench[s][:4] for s in SPLITS}
    long_q = "Please tell me, in as many words as you like and with every detail you know, " * 3
    rows["retain_perturbed"] = [{**rows["retain_perturbed"][0], "question": long_q + "who is it?"}] + \
        rows["retain_perturbed"][1:]
    res = evaluate_tofu(model, tok, rows, batch_size=4, max_new_tokens=200, show_progress=False)
    assert seen and max(seen) <= limit
    assert res["per_example"]["retain"]["generation"][0] == ""  # its prompt alone fills the context
    assert res["per_example"]["retain"]["probability"][0] == 0.0
    assert _finite(res["summary"])
    assert "maximum length" in caplog.text


def test_degenerate_models_get_zeros_not_crashes(tok, small):
    nan_model = _model(tok)
    nan_model.lm_head.register_forward_hook(lambda m, i, out: torch.full_like(out, float("nan")))
    res = evaluate_tofu(nan_model, tok, small, batch_size=4, max_new_tokens=4, show_progress=False)
    s = res["summary"]
    assert _finite(s)
    assert s["forget_probability"] == 0.0 and s["retain_probability"] == 0.0
    assert s["model_utility"] == 0.0
    assert all(math.isfinite(x) for x in res["per_example"]["forget"]["log_truth_ratio"])
    again = evaluate_tofu(nan_model, tok, small, batch_size=4, max_new_tokens=1, show_progress=False,
                          retain_results=res)
    assert again["summary"]["forget_quality"] == 1.0

    eos_model = _model(tok)  # says nothing at all: every generation is empty
    eos = tok.eos_token_id

    def only_eos(module, inputs, out):
        out = torch.zeros_like(out)
        out[..., eos] = 10.0
        return out

    eos_model.lm_head.register_forward_hook(only_eos)
    res = evaluate_tofu(eos_model, tok, small, batch_size=4, max_new_tokens=4, show_progress=False)
    assert all(g == "" for g in res["per_example"]["forget"]["generation"])
    assert res["summary"]["forget_rouge"] == 0.0 and res["summary"]["model_utility"] == 0.0
    assert _finite(res["summary"])


def test_missing_split_is_a_clear_error(tok, small):
    with pytest.raises(KeyError, match="no split 'world_facts_perturbed'"):
        evaluate_tofu(_model(tok), tok, {k: v for k, v in small.items() if k != "world_facts_perturbed"},
                      show_progress=False)
    bad = {**small, "retain_perturbed": [{"question": "q", "answer": "a"}]}
    with pytest.raises(ValueError, match="has no column 'paraphrased_answer'"):
        evaluate_tofu(_model(tok), tok, bad, show_progress=False)
