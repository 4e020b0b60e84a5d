"""Checkpoints the package loads and saves: a pickle torch refuses is one clear error; saved models carry no
pointer to remote code."""

import json
import os

import pytest
import torch
from sau_testing import sparse_model

from sau_trainer.modeling import CheckpointError, build_llama, load_causal_lm
from sau_trainer.pruning import prune_model, save_sparse_model


class Unsafe:
    def __reduce__(self):
        return (os.getcwd, ())  # any callable: torch's weights_only loader refuses it


def test_a_pickle_checkpoint_that_torch_refuses_is_one_clear_error(tmp_path):
    model = build_llama("tiny", vocab_size=64)
    model.config.save_pretrained(tmp_path)
    torch.save({**model.state_dict(), "extra": Unsafe()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as info:
        load_causal_lm(str(tmp_path))
    text = str(info.value)
    assert str(tmp_path) in text and "loads only safetensors checkpoints" in text and "\n" not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_plain_tensor_pickle_still_loads(tmp_path):
    model = build_llama("tiny", vocab_size=64)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_causal_lm(str(tmp_path))
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_pruned_model_config_drops_auto_map_and_trust_remote_code(tokenizer, tmp_path):
    model = sparse_model(tokenizer, sparsity=0.0)
    model.config.auto_map = {"AutoModelForCausalLM": "someone/repo--modeling_x.XForCausalLM"}
    model.config.trust_remote_code = True
    result = prune_model(model, "magnitude", 0.5, progress=False)
    save_sparse_model(model, tokenizer, tmp_path, result)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "auto_map" not in config and "trust_remote_code" not in config
    assert config["model_type"] == "llama"
    load_causal_lm(str(tmp_path))  # still a model transformers loads by itself


def test_a_recipe_on_a_refused_pickle_checkpoint_fails_in_one_line(tokenizer, tmp_path, capsys):
    from sau_trainer.cli import main as cli_main

    model_dir = tmp_path / "unsafe"
    model = build_llama("tiny", tokenizer)
    model.config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.save({**model.state_dict(), "extra": Unsafe()}, model_dir / "pytorch_model.bin")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "model": {"name_or_path": str(model_dir)}, "train_target": {"enabled": False},
        "data": {"benchmark": "synthetic", "preset": "tiny"}, "prune": {"method": ["magnitude"]},
        "unlearn": {"model": ["sparse"], "objective": ["npo"], "sau": [True]}}))
    assert cli_main(["run", str(recipe), "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("sau-trainer run: error:"))
    assert "CheckpointError" in line and "loads only safetensors checkpoints" in line


def test_eval_on_a_refused_pickle_checkpoint_fails_in_one_line(tokenizer, tmp_path, capsys):
    from sau_trainer.cli import main as cli_main

    model_dir = tmp_path / "unsafe"
    model = build_llama("tiny", tokenizer)
    model.config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.save({**model.state_dict(), "extra": Unsafe()}, model_dir / "pytorch_model.bin")
    rc = cli_main(["eval", "--model", str(model_dir), "--benchmark", "synthetic", "--preset", "tiny",
                   "--output", str(tmp_path / "out"), "--max-new-tokens", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "loads only safetensors checkpoints" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_prune_on_a_refused_pickle_checkpoint_fails_in_one_line(tokenizer, tmp_path, capsys):
    from sau_trainer.cli import main as cli_main

    model_dir = tmp_path / "unsafe"
    model = build_llama("tiny", tokenizer)
    model.config.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    torch.save({**model.state_dict(), "extra": Unsafe()}, model_dir / "pytorch_model.bin")
    rc = cli_main(["prune", "--model", str(model_dir), "--method", "magnitude", "--sparsity", "0.5",
                   "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "loads only safetensors checkpoints" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "model.safetensors").exists()
