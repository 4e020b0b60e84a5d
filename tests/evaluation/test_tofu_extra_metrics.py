"""The metrics open-unlearning reports beside the SPEC ones: ROUGE on paraphrased and perturbed answers,
rouge1 recall and rougeL F1, the ``prob_mean`` truth-ratio aggregator, TOFU on paraphrased questions and
gradnorm with the L1 and L-infinity norms, against hand-computed values or the documented formulas."""

import math

import numpy as np
import pytest
import torch

from sau_trainer.data.qa import encode_qa
from sau_trainer.evaluation import evaluate_tofu, mia
from sau_trainer.evaluation.metrics import rouge_scores, truth_ratio_prob_mean


@pytest.fixture(scope="module")
def bench():
    from sau_trainer.data.synthetic import generate_benchmark

    return generate_benchmark("tiny", 0)


@pytest.fixture(scope="module")
def small(bench):
    from sau_trainer.data.tofu import evaluation_splits

    return {s: bench[s][:4] for s in (*evaluation_splits("forget10"), "holdout10")}


@pytest.fixture(scope="module")
def tok(bench):
    from sau_trainer.data.tokenizer import train_tokenizer

    texts = [t for rows in bench.values() for r in rows
             for t in (r["question"], r["answer"], r.get("paraphrased_question", ""))]
    return train_tokenizer(texts, vocab_size=400)


def _llama(tok, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()


def test_rouge1_recall_and_rouge_l_f1_hand_values():
    ref = "Mira Talven was born in the city of Oslen."
    got = rouge_scores(["Mira Talven was born in Oslen.", "Oslen born in Mira Talven", ""], [ref, ref, ref])
    # 6 of the reference's 9 words appear, in order: recall 6/9 both ways, precision 1, F1 = 2(2/3)/(5/3)
    assert got["rouge1_recall"][0] == pytest.approx(6 / 9) and got["rouge_l_f1"][0] == pytest.approx(0.8)
    # reordered: every word but 3 matches (rouge1 5/9), the longest common subsequence is 2 words:
    # P = 2/5, R = 2/9, F1 = 2PR/(P+R) = 4/14
    assert got["rouge1_recall"][1] == pytest.approx(5 / 9) and got["rouge_l_recall"][1] == pytest.approx(2 / 9)
    assert got["rouge_l_f1"][1] == pytest.approx(2 * (2 / 5) * (2 / 9) / (2 / 5 + 2 / 9))
    assert [got[k][2] for k in got] == [0.0, 0.0, 0.0]


def test_prob_mean_aggregator_hand_values():
    # R = 1, 3, 1/3: correct / (correct + wrong) = 1 / (1 + R) = 1/2, 1/4, 3/4
    assert truth_ratio_prob_mean([0.0, math.log(3), -math.log(3)]) == pytest.approx(0.5, rel=1e-12)
    # probabilities that underflow (log R of 1e4 nats): 0, never NaN
    assert truth_ratio_prob_mean([1e4, -1e4]) == pytest.approx(0.5)


def test_tofu_reports_paraphrased_and_perturbed_rouge(tok, small, monkeypatch):
    from rouge_score.rouge_scorer import RougeScorer

    from sau_trainer.benchmarks.tofu import evaluation as tofu  # the module evaluate_tofu reads it from

    para = {r["question"]: r["paraphrased_answer"] for s in ("forget10_perturbed", "retain_perturbed")
            for r in small[s]}
    answers = {r["question"]: r["answer"] for rows in small.values() for r in rows}
    # the "model" answers every forget/retain question with its paraphrased answer, the others with the answer
    monkeypatch.setattr(tofu, "greedy_generate", lambda m, t, questions, *a, **k: [
        para.get(q, answers[q]) for q in questions])
    res = evaluate_tofu(_llama(tok), tok, small, batch_size=4, max_new_tokens=2, show_progress=False)
    s, per = res["summary"], res["per_example"]
    scorer = RougeScorer(["rouge1", "rougeL"], use_stemmer=True)  # open-unlearning's scorer (rouge-score)
    for name, split in (("forget", "forget10_perturbed"), ("retain", "retain_perturbed")):
        rows = small[split]
        gens = [r["paraphrased_answer"] for r in rows]
        assert per[name]["generation"] == gens
        assert s[f"{name}_paraphrased_rouge"] == pytest.approx(1.0)
        pert = [np.mean([scorer.score(p, g)["rougeL"].recall for p in r["perturbed_answer"]])
                for r, g in zip(rows, gens, strict=True)]
        assert per[name]["perturbed_rouge_l_recall"] == pytest.approx(pert, rel=1e-12)
        assert s[f"{name}_perturbed_rouge"] == pytest.approx(float(np.mean(pert)), rel=1e-12)
        vs_answer = [scorer.score(r["answer"], g) for r, g in zip(rows, gens, strict=True)]
        assert s[f"{name}_rouge"] == pytest.approx(np.mean([v["rougeL"].recall for v in vs_answer]), rel=1e-12)
        assert s[f"{name}_rouge1_recall"] == pytest.approx(np.mean([v["rouge1"].recall for v in vs_answer]), rel=1e-12)
        assert s[f"{name}_rouge_l_f1"] == pytest.approx(np.mean([v["rougeL"].fmeasure for v in vs_answer]), rel=1e-12)
        assert 0 < s[f"{name}_perturbed_rouge"] < 1
    assert s["world_facts_rouge1_recall"] == s["world_facts_rouge_l_f1"] == 1.0  # generated the answer itself
    assert "world_facts_paraphrased_rouge" not in s  # no paraphrase there (open-unlearning has none either)
    for name in ("forget", "retain", "real_authors", "world_facts"):
        log_r = np.asarray(per[name]["log_truth_ratio"])
        assert s[f"{name}_truth_ratio_prob_mean"] == pytest.approx(float(np.mean(1 / (1 + np.exp(log_r)))), rel=1e-12)


def test_tofu_on_paraphrased_questions(tok, small):
    model = _llama(tok)
    kw = dict(batch_size=4, max_new_tokens=1, show_progress=False)
    para = evaluate_tofu(model, tok, small, question_key="paraphrased_question", **kw)
    plain = evaluate_tofu(model, tok, small, **kw)
    for name, split in (("forget", "forget10_perturbed"), ("retain", "retain_perturbed")):
        assert para["per_example"][name]["question"] == [r["paraphrased_question"] for r in small[split]]
        assert para["per_example"][name]["nll_answer"] != plain["per_example"][name]["nll_answer"]  # asked otherwise
    for name in ("real_authors", "world_facts"):  # no paraphrased questions there: unchanged
        assert para["per_example"][name]["nll_answer"] == plain["per_example"][name]["nll_answer"]
    # the members of the membership-inference attack are the paraphrased forget questions' answers
    members = [encode_qa(tok, r["paraphrased_question"], r["answer"]) for r in small["forget10_perturbed"]]
    loss = mia.sequence_scores(model, tok, members, gradnorm=False)["loss"]
    assert para["per_example"]["mia"]["forget"]["loss"] == pytest.approx(loss, rel=1e-6)
    assert para["question_key"] == "paraphrased_question"
    with pytest.raises(ValueError, match="question_key='reworded': 4 rows of the forget split .first: row 0. have no"):
        evaluate_tofu(model, tok, small, question_key="reworded", **kw)


def test_gradnorm_l1_and_linf_against_a_float64_computation(tok, small):
    model = _llama(tok, seed=1)
    r = small["forget10_perturbed"][0]
    row = encode_qa(tok, r["question"], r["answer"])
    ids = torch.tensor([row["input_ids"]])
    labels = torch.tensor([row["labels"]])
    model.train()
    model.zero_grad()
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
    positions = [t for t in range(labels.shape[1] - 1) if labels[0, t + 1] != -100][:-1]  # without the last (EOS)
    loss = -torch.stack([logp[t, labels[0, t + 1]] for t in positions]).mean()
    loss.backward()
    grads = [p.grad.double().numpy() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.eval()
    expected = {1.0: np.mean([np.abs(g).sum() for g in grads]), 2.0: np.mean([np.sqrt((g ** 2).sum()) for g in grads]),
                math.inf: np.mean([np.abs(g).max() for g in grads])}
    for p, value in expected.items():
        assert mia.gradnorm_scores(model, [row], pad_id=tok.pad_token_id, p=p)[0] == pytest.approx(value, rel=1e-4)
    assert expected[1.0] > expected[2.0] > expected[math.inf] > 0
    with pytest.raises(ValueError, match="p must be 1, 2 or inf"):
        mia.gradnorm_scores(model, [row], p=3)
    res = evaluate_tofu(model, tok, small, batch_size=4, max_new_tokens=1, show_progress=False)
    assert {"mia_gradnorm", "mia_gradnorm_l1", "mia_gradnorm_linf"} <= set(res["summary"])
    assert len(res["per_example"]["mia"]["holdout"]["gradnorm_linf"]) == len(small["holdout10"])
