"""`sau-trainer prune` end to end on a tiny saved model."""

import json
import os

import pytest
from prune_helpers import random_texts, tiny_model, word_tokenizer

from sau_trainer.masks import SparsityMasks
from sau_trainer.pruning import cli as prune_cli
from sau_trainer.pruning.nm import check_nm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_cli")
    tok = word_tokenizer()
    tiny_model(vocab_size=len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    calib = root / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(12)))
    return root


def run(argv):
    try:
        from sau_trainer.cli import main
    except ImportError:  # the lead's dispatcher is not there: parse with our own parser
        return prune_cli._standalone(argv[1:])
    return main(argv)


def test_prune_writes_a_sparse_model_and_reports_perplexity(saved, capsys):
    out = saved / "out"
    argv = ["prune", "--model", str(saved / "model"), "--method", "wanda", "--structure", "2:4",
            "--calibration", str(saved / "calib.jsonl"), "--num-samples", "8", "--seq-len", "16",
            "--output", str(out), "--eval-ppl", str(saved / "calib.jsonl"), "--no-progress"]
    assert run(argv) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "-> " in printed
    meta = json.loads((out / "sparsity.json").read_text())
    assert meta["method"] == "wanda" and meta["structure"] == "2:4" and meta["calibration"]["num_samples"] == 8
    assert meta["calibration"]["source"] == str(saved / "calib.jsonl")
    masks = SparsityMasks.load(out)
    assert all(check_nm(masks.get(n), 2, 4) for n in masks.names)

    # a non-empty output directory is refused unless --force
    assert run(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert run(argv + ["--force"]) == 0


def test_prune_bad_input_exits_2_before_loading(saved, capsys):
    base = ["prune", "--model", str(saved / "missing-model"), "--output-dir", str(saved / "o2")]
    assert run(base + ["--method", "sparsegpt"]) == 2
    assert "needs --calibration" in capsys.readouterr().err
    assert run(base + ["--method", "magnitude", "--sparsity", "1.2"]) == 2
    assert "outside [0, 1)" in capsys.readouterr().err
    assert run(base + ["--method", "wanda", "--calibration", str(saved / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert "nope.txt: no such file or directory" in err
    assert "missing-model: no such directory" in err  # every problem is named, in one line
    assert err.count("\n") == 1 and err.startswith("sau-trainer prune: error: ")
    assert not os.path.exists(saved / "o2")


def test_magnitude_needs_no_calibration(saved):
    out = saved / "mag"
    assert run(["prune", "--model", str(saved / "model"), "--method", "magnitude", "--sparsity", "0.3",
                "--output", str(out), "--no-progress"]) == 0
    assert json.loads((out / "sparsity.json").read_text())["measured_sparsity"] == pytest.approx(0.3, abs=1e-3)
