"""MUSE's pieces against hand-computed references: the knowmem prompt, ROUGE-L F1, EM, ES, stop strings,
completion and chunk encodings, and the evaluator's output on a random tiny model."""

import pytest
import torch

from sau_trainer.data.muse import chunk_texts, encode_completion
from sau_trainer.evaluation.generation import cut_at_stop_strings
from sau_trainer.evaluation.metrics import exact_memorization, extraction_strength, rouge_l_f1, rouge_l_recall
from sau_trainer.evaluation.muse import KNOWMEM_STOP_STRINGS, evaluate_muse, knowmem_prompt


def test_knowmem_prompt_byte_for_byte():
    icl = [{"question": "Who wrote it?", "answer": "Ann"}, {"question": "Where?", "answer": "In Oslo"}]
    assert knowmem_prompt(icl, "When?") == (
        "Question: Who wrote it?\nAnswer: Ann\n\nQuestion: Where?\nAnswer: In Oslo\n\nQuestion: When?\nAnswer: ")


def test_rouge_l_f1_is_the_f_measure_of_lcs_precision_and_recall():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": 5 of 6 either way
    assert rouge_l_f1(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx([5 / 6])
    # prediction "the cat" against reference "the cat sat": P = 1, R = 2/3, F1 = 0.8 (recall alone: 2/3)
    assert rouge_l_f1(["the cat"], ["the cat sat"]) == pytest.approx([0.8])
    assert rouge_l_recall(["the cat"], ["the cat sat"]) == pytest.approx([2 / 3])
    # the stemmer is on (open-unlearning's RougeScorer(use_stemmer=True)); an empty prediction scores 0
    assert rouge_l_f1(["running cats"], ["run cat"]) == pytest.approx([1.0])
    assert rouge_l_f1([""], ["a b"]) == [0.0]
    with pytest.raises(ValueError, match="predictions"):
        rouge_l_f1(["a"], [])


def test_exact_memorization_and_extraction_strength_variants():
    correct = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    mask = torch.ones_like(correct)
    mask[3] = False
    em = exact_memorization(correct, mask)
    assert em[:3].tolist() == [0.75, 0.75, 1.0] and torch.isnan(em[3])
    # SPEC (TOFU): no correct suffix -> k = |y| -> 0; open-unlearning (MUSE): k stops at |y| - 1 -> 1/|y|
    assert extraction_strength(correct, mask).tolist() == [0.5, 0.0, 1.0, 0.0]
    assert extraction_strength(correct, mask, ou_quirk=True).tolist() == [0.5, 0.25, 1.0, 0.0]


def test_stop_strings_cut_generations():
    assert cut_at_stop_strings(" Oslen\n\nQuestion: next", KNOWMEM_STOP_STRINGS) == "Oslen"
    assert cut_at_stop_strings("a dog\nQuestion", KNOWMEM_STOP_STRINGS) == "a dog"
    assert cut_at_stop_strings("x Question: y", KNOWMEM_STOP_STRINGS) == "x"
    assert cut_at_stop_strings("  plain  ", ()) == "plain"


def test_completion_and_chunk_encodings(tokenizer):
    bos = tokenizer.bos_token_id
    enc = encode_completion(tokenizer, "Where was", "Mira born", insert_space=True)
    prefix = [bos] + tokenizer("Where was", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == [bos] + tokenizer("Where was Mira born", add_special_tokens=False)["input_ids"]
    assert enc["labels"][: len(prefix)] == [-100] * len(prefix)
    assert enc["labels"][len(prefix):] == enc["input_ids"][len(prefix):]
    assert len(encode_completion(tokenizer, "Where was", "Mira born in the city", max_length=2)["input_ids"]) == \
        len(prefix) + 2
    text_only = encode_completion(tokenizer, "", "Mira")
    assert text_only["labels"][0] == -100 and text_only["labels"][1:] == text_only["input_ids"][1:]

    texts = ["Mira Talven was born in the city of Oslen.", "The capital of Norlund is Varda."]
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    rows = chunk_texts(texts, tokenizer, max_length=5)
    assert len(rows) == len(ids) // 5 + (1 if len(ids) % 5 else 0)  # floor(N/L) + 1 chunks, an empty last dropped
    assert all(r["input_ids"][0] == bos and r["labels"][0] == -100 and r["labels"][1:] == r["input_ids"][1:]
               for r in rows)
    assert "".join(tokenizer.decode(r["input_ids"][1:]) for r in rows) == "\n\n".join(texts)
    with pytest.raises(ValueError, match="max_length"):
        chunk_texts(texts, tokenizer, 0)


def test_evaluate_muse_on_a_random_model_has_every_metric():
    from sau_trainer.data import get_benchmark, load_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer
    from sau_trainer.modeling import build_llama

    splits = load_benchmark("synthetic-muse")
    small = {k: v[:4] for k, v in splits.items()}
    tok = train_tokenizer(get_benchmark("synthetic-muse").tokenizer_texts(splits), vocab_size=300)
    model = build_llama("tiny", tok, seed=0)
    # with this 300-token vocabulary the verbmem prompts (304-374 tokens) fill the 256 positions: keep their ends
    res = evaluate_muse(model, tok, small, batch_size=4, show_progress=False, verbmem_max_new_tokens=8,
                        max_prompt_tokens=200)
    s = res["summary"]
    assert set(s) >= {"forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge", "privleak",
                      "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm",
                      "exact_memorization", "extraction_strength"}
    assert "forget_quality" not in s and "model_utility" not in s
    assert all(0.0 <= s[k] <= 1.0 for k in s if k != "privleak")
    assert s["privleak"] == pytest.approx(100 * (0.5 - s["mia_min_k"]) / 0.5)  # no retain results: AUC_ret 0.5
    again = evaluate_muse(model, tok, small, batch_size=3, show_progress=False, verbmem_max_new_tokens=8,
                          retain_results=res, max_prompt_tokens=200)
    assert again["summary"]["privleak"] == pytest.approx(0.0, abs=1e-6)  # against itself
    assert again["summary"]["mia_loss"] == pytest.approx(s["mia_loss"])  # batch size does not matter
    assert len(res["per_example"]["mia"]["forget"]["loss"]) == 4
    with pytest.raises(KeyError, match="verbmem/forget"):
        evaluate_muse(model, tok, {k: v for k, v in small.items() if k != "verbmem/forget"}, show_progress=False)
