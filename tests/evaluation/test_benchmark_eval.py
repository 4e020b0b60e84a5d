"""Membership inference on the TOFU protocol (forget vs the matching holdout split) and `sau-trainer eval`
on every kind of benchmark, with a random tiny model (the numbers' meaning is tested on trained models)."""

import json

import pytest
import torch

from sau_trainer.cli import main as cli_main
from sau_trainer.evaluation import evaluate_tofu, privleak
from sau_trainer.evaluation.results import attach_forget_quality, build_results, load_results, save_results

MIA_KEYS = {"mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "exact_memorization",
            "privleak"}


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    from sau_trainer.data import generate_benchmark, generate_muse_benchmark, get_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer
    from sau_trainer.modeling import build_llama

    texts = get_benchmark("synthetic").tokenizer_texts(generate_benchmark("tiny", 0))
    texts += get_benchmark("synthetic-muse").tokenizer_texts(generate_muse_benchmark("tiny", 0))
    tok = train_tokenizer(texts, vocab_size=300)
    model = build_llama({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "num_key_value_heads": 1, "max_position_embeddings": 256}, tok, seed=0)
    path = tmp_path_factory.mktemp("random-llama-mia")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_tofu_membership_inference_forget_against_holdout(random_dir, tiny_splits):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(random_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(random_dir)
    splits = {k: tiny_splits[k] for k in ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed",
                                          "world_facts_perturbed", "holdout10")}
    res = evaluate_tofu(model, tok, splits, batch_size=16, max_new_tokens=2, show_progress=False)
    s = res["summary"]
    assert MIA_KEYS <= set(s) and all(0.0 <= s[k] <= 1.0 for k in MIA_KEYS - {"privleak"})
    assert s["privleak"] == pytest.approx(privleak(s["mia_min_k"], 0.5))  # no retain results: AUC_ret 0.5
    assert len(res["per_example"]["mia"]["forget"]["loss"]) == len(splits["forget10_perturbed"])
    assert len(res["per_example"]["mia"]["holdout"]["loss"]) == len(splits["holdout10"])
    # the existing TOFU metrics are untouched, and against itself privleak is 0 and forget quality 1
    assert {"forget_quality", "model_utility", "forget_rouge", "extraction_strength"} <= set(s)
    self_ref = attach_forget_quality(res, res)["summary"]
    assert self_ref["privleak"] == 0.0 and self_ref["forget_quality"] == 1.0
    # without the holdout split the attacks are skipped, nothing else changes
    without = evaluate_tofu(model, tok, {k: v for k, v in splits.items() if k != "holdout10"}, batch_size=16,
                            max_new_tokens=2, show_progress=False)["summary"]
    assert not MIA_KEYS & set(without)
    assert {k: without[k] for k in without} == {k: s[k] for k in without}


def test_eval_cli_on_synthetic_muse_and_tofu_holdout(random_dir, tmp_path, capsys):
    out = tmp_path / "muse"
    args = ["eval", "--model", str(random_dir), "--benchmark", "synthetic-muse", "--output-dir", str(out),
            "--batch-size", "16", "--no-progress", "--max-prompt-tokens", "128"]  # prompts of 304-374 tokens, 256 positions
    assert cli_main(args) == 0
    results = load_results(out)
    assert results["protocol"] == "muse" and results["settings"]["benchmark"] == "synthetic-muse"
    assert {"forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge", *MIA_KEYS} <= set(
        results["summary"])
    assert list(results["summary"])[:4] == ["forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge",
                                            "privleak"]
    # against its own results as the retain reference: privleak 0 (recomputed from the saved numbers)
    assert cli_main([*args, "--retain-results", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["summary"]["privleak"] == 0.0
    capsys.readouterr()
    assert cli_main([*args, "--subset", "news"]) == 2
    assert "sau-trainer eval: error: --benchmark synthetic-muse: synthetic-muse has no subset 'news'" in \
        capsys.readouterr().err
    tofu = tmp_path / "tofu"
    assert cli_main(["eval", "--model", str(random_dir), "--benchmark", "synthetic", "--output-dir", str(tofu),
                     "--max-new-tokens", "2", "--batch-size", "32", "--no-progress"]) == 0
    assert MIA_KEYS <= set(json.loads((tofu / "results.json").read_text())["summary"])


def test_results_round_trip_keeps_privleak_reference(tmp_path):
    evaluation = {"summary": {"mia_min_k": 0.9}, "per_example": {"mia": {}}, "protocol": "muse"}
    ref = {"summary": {"mia_min_k": 0.6}, "per_example": {}}
    out = attach_forget_quality(evaluation, ref)
    assert out["summary"]["privleak"] == pytest.approx(100 * (0.6 - 0.9) / 0.4)
    assert out["privleak_retain_auc"] == 0.6 and "forget_quality" not in out["summary"]
    save_results(build_results(out, {"path": "m"}, {"x": 1}), tmp_path)
    back = load_results(tmp_path)
    assert back["protocol"] == "muse" and back["privleak_retain_auc"] == 0.6
