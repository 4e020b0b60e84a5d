"""`sau-trainer eval --benchmark muse --data-dir` on small files in the Hub's layout with raw/retain1, raw/retain2
and raw/holdout missing (the evaluation reads none of them): row limits, per-split log lines, the privleak cut,
references on other rows, prompts that fill the model's positions, a News folder read as Books."""

import json
import logging
import re

import pytest

from sau_trainer.cli import main as cli_main
from sau_trainer.evaluation.results import load_results

MISSING = ("raw/retain1", "raw/retain2", "raw/holdout")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    from sau_trainer.data import write_muse_benchmark

    data = tmp_path_factory.mktemp("muse-snapshot")
    paths = write_muse_benchmark(data, "tiny", seed=0, fmt="parquet")
    for split in MISSING:
        paths[split].unlink()
    return data


@pytest.fixture(scope="module")
def tok():
    from sau_trainer.data import generate_muse_benchmark, get_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer

    # 512 tokens: the verbmem prompts are 149-185 tokens, the knowmem prompts at most 69
    return train_tokenizer(get_benchmark("synthetic-muse").tokenizer_texts(generate_muse_benchmark("tiny", 0)),
                           vocab_size=512)


def _model(tok, positions: int):
    from sau_trainer.modeling import build_llama

    return build_llama({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "max_position_embeddings": positions}, tok, seed=0)


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("muse-random-256")
    _model(tok, 256).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _eval(model_dir, data_dir, out, *extra):
    return cli_main(["eval", "--model", str(model_dir), "--benchmark", "muse", "--data-dir", str(data_dir),
                     "--output-dir", str(out), "--batch-size", "16", "--no-progress", *extra])


def test_row_limit_is_applied_recorded_and_logged_per_split(model_dir, snapshot, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    out = tmp_path / "limited"
    assert _eval(model_dir, snapshot, out, "--max-rows", "3") == 0
    results = load_results(out)
    assert results["settings"]["max_rows"] == 3
    assert results["rows"] == {"verbmem/forget": {"evaluated": 3, "of": 10},
                               "knowmem/forget_qa": {"evaluated": 3, "of": 30},
                               "knowmem/retain_qa": {"evaluated": 3, "of": 24},
                               "privleak/forget": {"evaluated": 3, "of": 10},
                               "privleak/holdout": {"evaluated": 3, "of": 10}}
    per = results["per_example"]
    assert len(per["verbmem_forget"]["generation"]) == len(per["knowmem_forget"]["generation"]) == 3
    assert len(per["mia"]["forget"]["min_k"]) == len(per["mia"]["holdout"]["min_k"]) == 3
    assert "first 3 rows per split" in capsys.readouterr().out
    # --no-progress: one line per split, with its rows and its time
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MUSE ")]
    for split, of in (("verbmem/forget", "10"), ("knowmem/forget_qa", "30"), ("knowmem/retain_qa", "24"),
                      ("privleak/forget \\+ privleak/holdout", "10 \\+ 10")):
        pattern = re.compile(rf"^MUSE {split}: 3( \+ 3)? of {of} rows \(.+\) in \d+\.\d s \(\d+\.\d s so far\)\.$")
        assert any(pattern.match(line) for line in lines), (split, lines)
    # a different limit is a different evaluation; without one every row is read (and settings stay as before)
    caplog.clear()
    assert _eval(model_dir, snapshot, out, "--max-rows", "4") == 0
    assert "max_rows changed" in caplog.text and load_results(out)["rows"]["verbmem/forget"]["evaluated"] == 4
    # other protocols have no such option
    capsys.readouterr()
    assert cli_main(["eval", "--model", str(model_dir), "--benchmark", "synthetic", "--output-dir",
                     str(tmp_path / "tofu"), "--max-rows", "3"]) == 2
    assert "--max-rows: for MUSE-protocol benchmarks" in capsys.readouterr().err


def test_a_reference_is_reused_for_privleak_only_on_the_same_rows(model_dir, snapshot, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    target, ref = tmp_path / "target", tmp_path / "ref"
    assert _eval(model_dir, snapshot, target, "--max-rows", "3") == 0
    assert _eval(model_dir, snapshot, ref, "--max-rows", "4") == 0
    # the target's own results as the reference: the per-example numbers are reused, privleak (not forget
    # quality, which MUSE does not have) is recomputed
    caplog.clear()
    assert _eval(model_dir, snapshot, target, "--max-rows", "3", "--retain-results", str(target)) == 0
    assert "recomputing privleak against" in caplog.text and "forget quality" not in caplog.text
    assert load_results(target)["summary"]["privleak"] == 0.0
    # a reference scored on 4 + 4 rows for a target on 3 + 3: refused, whether reused or computed
    capsys.readouterr()
    assert _eval(model_dir, snapshot, target, "--max-rows", "3", "--retain-results", str(ref)) == 2
    err = capsys.readouterr().err
    assert "scored 4 member and 4 non-member rows" in err and "this evaluation 3 and 3" in err
    assert "--max-rows" in err and len(err.strip().splitlines()) == 1
    assert _eval(model_dir, snapshot, tmp_path / "fresh", "--max-rows", "3", "--retain-results", str(ref)) == 2
    assert "scored 4 member and 4 non-member rows" in capsys.readouterr().err
    assert not (tmp_path / "fresh" / "results.json").exists()


def test_prompts_that_fill_the_positions_are_refused_with_the_fix(tok, snapshot, tmp_path, capsys):
    """VerbMem prompts of about 1,300 tokens (eight forget profiles each) on a model with 256 positions."""
    import shutil

    import pandas as pd

    long_dir = tmp_path / "long"
    shutil.copytree(snapshot, long_dir)
    parquet = long_dir / "verbmem" / "forget-00000-of-00001.parquet"
    texts = [f"{r['prompt']} {r['gt']}" for r in pd.read_parquet(parquet).to_dict("records")]
    parquet.unlink()
    rows = [{"prompt": " ".join(texts[i:] + texts[:i])[:6000], "gt": texts[i]} for i in range(4)]
    (long_dir / "verbmem" / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [1 + len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert min(lengths) > 1000

    model_dir = tmp_path / "model"
    _model(tok, 256).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    capsys.readouterr()
    assert _eval(model_dir, long_dir, tmp_path / "refused") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sau-trainer eval: error: MUSE verbmem/forget: 4 of 4 ")
    assert f"prompts are {min(lengths)}-{max(lengths)} tokens, which fill the model's 256 positions" in err
    assert "greedy generation would add nothing and score 0" in err
    assert f"at least {max(lengths) + 128} positions" in err and "--max-prompt-tokens 128" in err
    assert not (tmp_path / "refused" / "results.json").exists()
    # the fix: each prompt's last 127 tokens and BOS, and 128 new tokens
    out = tmp_path / "fixed"
    assert _eval(model_dir, long_dir, out, "--max-prompt-tokens", "128") == 0
    results = load_results(out)
    assert results["settings"]["max_prompt_tokens"] == 128
    assert any(results["per_example"]["verbmem_forget"]["generation"])


def test_a_news_folder_read_as_books_is_refused(model_dir, snapshot, tmp_path, capsys):
    import shutil

    news = tmp_path / "news"
    shutil.copytree(snapshot, news)
    (news / "sust").mkdir()
    (news / "sust" / "forget_1-00000-of-00001.parquet").write_bytes(b"")
    assert _eval(model_dir, news, tmp_path / "out", "--subset", "books") == 2
    err = capsys.readouterr().err
    assert "looks like MUSE-News, not MUSE-Books: it has the sust/ folder" in err and "--subset news" in err


def test_privleak_texts_cut_to_2048_tokens_are_logged_with_their_lengths(tok, snapshot, caplog):
    """Texts of 2,000-3,000 tokens, a model with 4,096 positions: the protocol's cut at 2,048 is logged (INFO)
    with the counts and the lengths before it; a model with fewer positions cuts lower, as a warning."""
    from sau_trainer.data import load_benchmark
    from sau_trainer.evaluation.muse import encode_privleak_texts, evaluate_muse

    splits = load_benchmark("muse", data_dir=snapshot, splits=[
        "verbmem/forget", "knowmem/forget_qa", "knowmem/forget_qa_icl", "knowmem/retain_qa", "knowmem/retain_qa_icl",
        "privleak/forget", "privleak/holdout"])
    texts = [r["text"] for r in splits["privleak/forget"] + splits["privleak/holdout"]]
    long = [" ".join(texts[i:] + texts[:i]) for i in range(4)]
    long = [t[: 9000 + 1500 * i] for i, t in enumerate(long)]
    splits["privleak/forget"] = [{"text": t} for t in long[:2]]
    splits["privleak/holdout"] = [{"text": t} for t in long[2:] + [texts[0]]]  # one short text: not cut
    n = [1 + len(tok(t, add_special_tokens=False)["input_ids"]) for t in long]
    assert min(n) > 2048
    model = _model(tok, 4096)
    caplog.set_level(logging.INFO)
    evaluate_muse(model, tok, splits, batch_size=4, show_progress=False, max_rows=3, gradnorm=False,
                  verbmem_max_new_tokens=2, knowmem_max_new_tokens=2)
    line = [r for r in caplog.records if r.getMessage().startswith("MUSE privleak texts cut")]
    assert len(line) == 1 and line[0].levelno == logging.INFO
    assert line[0].getMessage() == (
        "MUSE privleak texts cut to the maximum length 2048: "
        f"privleak/forget: 2 of 2 (up to {max(n[:2]) - 2048} tokens cut, {sum(n[:2]) - 4096} in all; "
        f"{min(n[:2])}-{max(n[:2])} tokens before the cut); "
        f"privleak/holdout: 2 of 3 (up to {max(n[2:]) - 2048} tokens cut, {sum(n[2:]) - 4096} in all; "
        f"{min(n[2:])}-{max(n[2:])} tokens before the cut).")
    # the full text stays with each cut row for the zlib attack on it (compat muse)
    rows = encode_privleak_texts(tok, [{"text": long[0]}], "privleak/forget", 2048, keep_text=True)
    assert len(rows[0]["input_ids"]) == 2048 and rows[0]["zlib_text"] == long[0]
    caplog.clear()
    evaluate_muse(_model(tok, 1024), tok, splits, batch_size=4, show_progress=False, max_rows=1, gradnorm=False,
                  verbmem_max_new_tokens=2, knowmem_max_new_tokens=2)
    line = [r for r in caplog.records if r.getMessage().startswith("MUSE privleak texts cut to the maximum length 1024")]
    assert len(line) == 1 and line[0].levelno == logging.WARNING
