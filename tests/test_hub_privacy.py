"""Nothing prepared for upload names a local absolute path or holds a credential; a bad repo id is refused before
anything is prepared. Every file of the prepared folder is searched, whatever wrote it."""

import json
from pathlib import Path

import pytest
import yaml

from sau_trainer import hub
from sau_trainer.cli import main as cli_main

TOKEN = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210"


def leaks(folder: Path, *secrets: str) -> dict[str, list[str]]:
    """{file: [secret, ...]} for every file in `folder` (binary ones included) that contains one of `secrets`."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits = [s for s in secrets if s.encode() in data]
            if hits:
                found[str(path.relative_to(folder))] = hits
    return found


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tokenizer):
    """A tiny sparse model saved as a pipeline run saves it, whose results.json, sparsity.json and recipe name
    absolute local paths (the model, the data, the calibration file, the run's own folder), as they do."""
    from sau_trainer.modeling import build_llama
    from sau_trainer.pruning import prune_model, save_sparse_model

    root = tmp_path_factory.mktemp("local")
    model_dir = root / "stages" / "models" / "magnitude-50-npo-sau-lr0.001-s0"
    model = build_llama("tiny", tokenizer, seed=0)
    save_sparse_model(model, tokenizer, model_dir, prune_model(model, "magnitude", 0.5, progress=False))
    meta = json.loads((model_dir / "sparsity.json").read_text())
    meta["unlearning"] = {"objective": "npo", "sau": True, "source": str(root / "stages" / "models" / "finetuned")}
    (model_dir / "sparsity.json").write_text(json.dumps(meta))
    results = {"summary": {"forget_quality": 0.5, "model_utility": 0.4}, "forget_split": "forget10",
               "path": str(root / "stages" / "eval" / "x" / "results.json"),
               "model": {"name": "x", "path": str(model_dir)},
               "forget_quality_reference": {"path": str(root / "stages/eval/retain/results.json"),
                                            "model": str(root / "retain-model")},
               "settings": {"data": {"data_dir": str(root / "data")}},
               # text that only looks like a path (a generation, a tokenizer's merge) is not one
               "per_example": {"forget": {"generated": ["/ s /", "/usr/share/dict/words"]}}}
    (model_dir / "results.json").write_text(json.dumps(results))
    recipe = {"model": {"name_or_path": str(root / "base-model")},
              "data": {"benchmark": "synthetic", "data_dir": str(root / "data")},
              "train_retain": {"enabled": False, "model": "~/models/retain"},
              "prune": {"calibration_path": str(root / "calibration.txt")},
              "unlearn": {"args": {"hub_token": TOKEN}}}  # a recipe.yaml written before tokens were refused
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root, model_dir


def test_the_prepared_folder_names_no_local_path_and_no_token(local_run, tmp_path):
    root, model_dir = local_run
    folder = hub.prepare_push_folder(model_dir, tmp_path / "upload", results=model_dir / "results.json",
                                     recipe=root / "recipe.yaml", run_name=model_dir.name, repo_id="me/x")
    assert leaks(folder, str(root), str(tmp_path), "~/models", TOKEN) == {}
    results = json.loads((folder / "results.json").read_text())
    assert results["model"]["path"] == model_dir.name and results["path"] == "results.json"  # basenames
    assert results["settings"]["data"]["data_dir"] == "data" and results["summary"]["model_utility"] == 0.4
    assert results["per_example"]["forget"]["generated"] == ["/ s /", "/usr/share/dict/words"]
    card = (folder / "README.md").read_text()
    recipe_block = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert recipe_block["model"]["name_or_path"] == "base-model" and recipe_block["data"]["data_dir"] == "data"
    assert recipe_block["prune"]["calibration_path"] == "calibration.txt"
    assert "hub_token" not in card
    assert "base_model" not in yaml.safe_load(card.split("---\n")[1])  # a local model is no Hub base model
    assert json.loads((folder / "sparsity.json").read_text())["unlearning"]["source"] == "finetuned"
    # the source files are untouched (the run keeps its own paths)
    assert json.loads((model_dir / "results.json").read_text())["model"]["path"] == str(model_dir)


def test_push_command_uploads_a_clean_folder(local_run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    root, model_dir = local_run
    seen = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        seen["leaks"] = leaks(Path(folder_path), str(root), str(tmp_path), TOKEN)
        return type("Info", (), {"commit_url": "https://huggingface.co/me/x/commit/1"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    code = cli_main(["push", str(model_dir), "--repo-id", "me/x", "--recipe", str(root / "recipe.yaml"),
                     "--output", str(tmp_path / "upload")])
    assert code == 0, capsys.readouterr().err
    assert seen["leaks"] == {}


@pytest.mark.parametrize("repo", ["a/b/c", "me/x--y", "https://huggingface.co/me/x"])
def test_push_refuses_a_bad_repo_id_before_preparing_anything(local_run, tmp_path, capsys, repo):
    _, model_dir = local_run
    code = cli_main(["push", str(model_dir), "--repo-id", repo, "--output", str(tmp_path / "upload")])
    err = capsys.readouterr().err
    assert code == 2 and "--repo-id" in err and "not a Hub repository id" in err
    assert not (tmp_path / "upload").exists()


def test_push_refuses_a_recipe_that_expands_beyond_the_bound(local_run, tmp_path, capsys):
    _, model_dir = local_run
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)))
    code = cli_main(["push", str(model_dir), "--repo-id", "me/x", "--recipe", str(bomb), "--dry-run",
                     "--output", str(tmp_path / "upload")])
    assert code == 2 and "expands beyond" in capsys.readouterr().err


def test_a_hub_base_model_stays_in_the_card():
    card = hub.model_card({}, None, {"model": {"name_or_path": "meta-llama/Llama-3.2-1B"}})
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == "meta-llama/Llama-3.2-1B"


@pytest.mark.slow  # a whole recipe run (no training: the model is random), about 15 s
def test_a_recipe_run_prepares_a_folder_free_of_local_paths(tmp_path, tokenizer, tiny_splits, monkeypatch):
    """The pipeline's own push: model card, results.json, sparsity.json and every model file, searched for the
    absolute paths of the output, the data, the model and the calibration file."""
    from huggingface_hub import HfApi

    from sau_trainer.modeling import build_llama
    from sau_trainer.pipeline import run_recipe, validate

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder",
                        lambda self, **kw: type("Info", (), {"commit_url": "https://huggingface.co/me/x/commit/1"})())
    model_dir, data_dir, calibration = tmp_path / "model", tmp_path / "data", tmp_path / "calibration.txt"
    build_llama("tiny", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data_dir.mkdir()
    for split, rows in tiny_splits.items():
        (data_dir / f"{split}.json").write_text(json.dumps(rows))
    calibration.write_text("a calibration text\n" * 8)
    recipe = validate({
        "name": "privacy", "torch_threads": 1, "model": {"name_or_path": str(model_dir)},
        "data": {"data_dir": str(data_dir)},
        "train_target": {"enabled": False}, "train_retain": {"enabled": False, "model": str(model_dir)},
        "prune": {"method": ["magnitude"], "sparsity": [0.5], "calibration_path": str(calibration)},
        "unlearn": {"model": ["sparse"], "objective": ["npo"], "sau": [True], "learning_rate": [1e-3],
                    "num_train_epochs": 1, "per_device_train_batch_size": 10, "logging_steps": 1000,
                    "args": {"disable_tqdm": True}},
        "evaluate": {"batch_size": 64, "max_new_tokens": 2},
        "report": {"plot": False},
        "push": {"push_to_hub": True, "hub_model_id": "me/privacy"}})
    out = tmp_path / "out"
    run_recipe(recipe, out)
    folder = out / "stages" / "push" / "upload"
    assert (folder / "README.md").is_file() and (folder / "results.json").is_file()
    assert leaks(folder, str(tmp_path), str(tmp_path.resolve())) == {}
    assert "`model`" in (folder / "README.md").read_text()  # the model is named by its folder's name
    # only the paths changed: every key and number of the evaluation's results.json is there
    run = recipe.push.run or json.loads((out / "stages" / "push" / "stage.json").read_text())["info"]["run"]
    local = json.loads((out / "stages" / "eval" / run / "results.json").read_text())
    uploaded = json.loads((folder / "results.json").read_text())
    assert keys(uploaded) == keys(local) and uploaded["per_example"] == local["per_example"]
    assert uploaded["summary"] == local["summary"] and uploaded["model"]["path"] == run


def keys(doc, prefix=""):
    """Every key path of a JSON document."""
    if isinstance(doc, dict):
        return {k for key, v in doc.items() for k in {f"{prefix}.{key}"} | keys(v, f"{prefix}.{key}")}
    return set()


def test_a_folder_holding_a_token_is_not_uploaded(local_run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    _, model_dir = local_run
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
    folder = hub.prepare_push_folder(model_dir, tmp_path / "upload")
    (folder / "README.md").write_text(f"pushed with {TOKEN}\n")  # e.g. a card written by an older version
    with pytest.raises(hub.PushError, match="holds an access token") as info:
        hub.upload(folder, "me/x")
    assert calls == [] and TOKEN not in str(info.value)
