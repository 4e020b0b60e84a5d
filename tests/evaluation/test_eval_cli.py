"""`sau-trainer eval`: writes results.json, reuses it only for identical settings, says which."""

import json
import logging
import os

import pytest
import torch

from sau_trainer.cli import main as cli_main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from sau_trainer.data.synthetic import generate_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer

    bench = generate_benchmark("tiny", 0)
    tok = train_tokenizer([t for rows in bench.values() for r in rows for t in (r["question"], r["answer"])],
                          vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    path = tmp_path_factory.mktemp("random-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _eval(model_dir, out, *extra):
    return cli_main(["eval", "--model", str(model_dir), "--benchmark", "synthetic", "--preset", "tiny",
                     "--seed", "0", "--forget-split", "forget10", "--output", str(out), "--max-new-tokens", "2",
                     "--batch-size", "32", "--no-progress", *extra])


def test_eval_writes_then_reuses_then_recomputes(model_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    out = tmp_path / "eval"
    assert _eval(model_dir, out) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "sau-trainer/tofu-results" and results["version"] == 1
    assert results["summary"]["forget_quality"] is None
    assert "Forget quality is null: no retain-model results" in caplog.text
    assert {"model_utility", "forget_rouge", "forget_truth_ratio", "extraction_strength", "retain_probability",
            "real_authors_rouge", "world_facts_truth_ratio"} <= set(results["summary"])
    assert results["settings"]["forget_split"] == "forget10" and results["settings"]["preset"] == "tiny"
    assert len(results["settings_hash"]) == 16
    assert len(results["per_example"]["forget"]["log_truth_ratio"]) == 20
    assert results["model"]["num_parameters"] > 0
    assert "forget_quality" in capsys.readouterr().out

    caplog.clear()
    mtime = (out / "results.json").stat().st_mtime_ns
    assert _eval(model_dir, out) == 0
    assert "Reusing" in caplog.text and results["settings_hash"] in caplog.text
    assert (out / "results.json").stat().st_mtime_ns == mtime

    # the model itself as the retain model: forget quality 1.0, from the saved per-example numbers
    caplog.clear()
    assert _eval(model_dir, out, "--retain-results", str(out / "results.json")) == 0
    assert "recomputing forget quality" in caplog.text
    with_fq = json.loads((out / "results.json").read_text())
    assert with_fq["summary"]["forget_quality"] == 1.0
    assert with_fq["per_example"] == results["per_example"]
    assert with_fq["forget_quality_reference"]["settings_hash"] == results["settings_hash"]

    caplog.clear()  # the same settings without a reference: forget quality goes back to null, never stale
    assert _eval(model_dir, out) == 0
    without = json.loads((out / "results.json").read_text())
    assert without["summary"]["forget_quality"] is None and without["forget_quality_reference"] is None
    assert "Forget quality is null" in caplog.text

    caplog.clear()  # other settings recompute and name what changed
    assert _eval(model_dir, out, "--seed", "1") == 0
    assert "other settings (data_fingerprint, seed changed); recomputing" in caplog.text
    assert json.loads((out / "results.json").read_text())["settings"]["seed"] == 1


def test_changed_model_files_are_never_reused(model_dir, tmp_path, caplog):
    import shutil

    caplog.set_level(logging.INFO)
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    out = tmp_path / "eval"
    assert _eval(copy, out) == 0
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # "retrained"
    caplog.clear()
    assert _eval(copy, out) == 0
    assert "model_fingerprint changed" in caplog.text and "Reusing" not in caplog.text


def test_eval_rejects_a_directory_without_a_model(tmp_path, capsys):
    assert _eval(tmp_path, tmp_path / "out") == 2  # argparse's status for bad input, as the other subcommands
    err = capsys.readouterr().err.strip()
    assert err.startswith("sau-trainer eval: error: --model ") and "no config.json" in err and "\n" not in err


def test_eval_compat_and_question_key_reach_the_evaluation(model_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    out = tmp_path / "eval"
    assert _eval(model_dir, out, "--compat", "open-unlearning") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["compat"] == "open-unlearning" and results["definitions"] == "open-unlearning"
    assert results["settings"]["compat"] == "open-unlearning"
    caplog.clear()  # the package's definitions are other settings: recomputed, never the compat file reused
    assert _eval(model_dir, out) == 0
    assert "compat changed" in caplog.text and "Reusing" not in caplog.text
    assert json.loads((out / "results.json").read_text())["definitions"] == "package defaults"

    caplog.clear()
    assert _eval(model_dir, tmp_path / "para", "--question-key", "paraphrased_question") == 0
    para = json.loads((tmp_path / "para" / "results.json").read_text())
    assert para["settings"]["question_key"] == "paraphrased_question"
    assert para["per_example"] != results["per_example"]  # other questions asked, other numbers


@pytest.mark.parametrize("extra, words", [
    (("--compat", "muse"), "--compat: compat 'muse' defines MUSE metrics only"),
    (("--benchmark", "synthetic-muse", "--question-key", "paraphrased_question"), "for TOFU-protocol benchmarks"),
])
def test_eval_refuses_settings_that_do_not_fit_the_protocol(model_dir, tmp_path, capsys, extra, words):
    assert _eval(model_dir, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "results.json").exists()
