"""Hub push, offline: the upload is intercepted at the huggingface_hub call and the folder and card checked."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from sau_trainer import hub
from sau_trainer.cli import main as cli_main

RECIPE = {"name": "t", "model": {"name_or_path": "meta-llama/Llama-3.2-1B-Instruct"},
          "data": {"benchmark": "tofu", "forget_split": "forget10"}}
SUMMARY = {"forget_quality": 0.0123, "model_utility": 0.61, "forget_rouge": 0.25, "forget_probability": 0.1,
           "extraction_strength": 0.2}


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory, tokenizer):
    """A tiny Llama pruned to 50% with magnitude and saved as the pipeline saves it, with a results.json."""
    from sau_trainer import SparsityMasks
    from sau_trainer.modeling import build_llama
    from sau_trainer.pruning import prune_model, save_sparse_model

    out = tmp_path_factory.mktemp("sparse")
    model = build_llama("tiny", tokenizer, seed=0)
    result = prune_model(model, "magnitude", 0.5, progress=False)
    save_sparse_model(model, tokenizer, out, result)
    meta = json.loads((out / "sparsity.json").read_text())
    meta["unlearning"] = {"objective": "npo", "sau": True, "learning_rate": 1e-5, "seed": 0}
    (out / "sparsity.json").write_text(json.dumps(meta))
    assert SparsityMasks.load(out).sparsity() == 0.5
    (out / "results.json").write_text(json.dumps({"summary": SUMMARY, "forget_split": "forget10"}))
    (out / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    return out


@pytest.fixture
def hub_calls(monkeypatch):
    """Intercept HfApi.create_repo / upload_folder; record the call and a snapshot of the uploaded folder."""
    from huggingface_hub import HfApi

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = {"repo_id": repo_id, "folder": folder, **kwargs,
                                  "files": sorted(p.name for p in folder.iterdir()),
                                  "card": (folder / "README.md").read_text()}
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_push_uploads_model_metadata_and_card(sparse_dir, hub_calls, tmp_path, capsys):
    before = digest(sparse_dir)
    folder = tmp_path / "upload"
    code = cli_main(["push", str(sparse_dir), "--repo-id", "me/tiny-sau", "--output", str(folder),
                     "--recipe", str(sparse_dir / "recipe.yaml")])
    assert code == 0, capsys.readouterr().err
    assert "commit/abc" in capsys.readouterr().out
    assert hub_calls["create_repo"]["repo_id"] == "me/tiny-sau" and hub_calls["create_repo"]["private"] is True
    up = hub_calls["upload_folder"]
    assert up["repo_id"] == "me/tiny-sau" and up["folder"] == folder
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sparsity.json",
                 "sparsity_masks.safetensors", "results.json", "README.md"):
        assert name in up["files"]
    sparsity = json.loads((folder / "sparsity.json").read_text())
    assert sparsity["measured_sparsity_weights"] == 0.5  # counted in the uploaded weights
    assert len(sparsity["per_matrix_sparsity"]) == 14 and set(sparsity["per_matrix_sparsity"].values()) == {0.5}
    meta = front_matter(up["card"])
    assert {"sau-trainer", "magnitude", "npo", "sau", "sparse"} <= set(meta["tags"])
    assert meta["base_model"] == "meta-llama/Llama-3.2-1B-Instruct" and meta["datasets"] == ["locuslab/TOFU"]
    assert meta["metrics"][:2] == ["forget_quality", "model_utility"]
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["model_utility"] == 0.61
    card = up["card"]
    assert "## Results" in card and "| Model utility | 0.61 |" in card
    assert "## Sparsity per layer" in card and "`model.layers.1.mlp.down_proj.weight` | 0.5000" in card
    assert "## Recipe" in card and "Llama-3.2-1B-Instruct" in card.split("## Recipe")[1]
    assert digest(sparse_dir) == before  # the source directory is untouched


def test_a_failed_push_says_so_and_keeps_the_local_output(sparse_dir, monkeypatch, tmp_path, capsys):
    from huggingface_hub import HfApi

    def no_token(self, repo_id, **kwargs):
        raise OSError("401 Client Error: Unauthorized (no token)")

    monkeypatch.setattr(HfApi, "create_repo", no_token)
    before = digest(sparse_dir)
    folder = tmp_path / "upload"
    assert cli_main(["push", str(sparse_dir), "--repo-id", "me/x", "--output", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "push to 'me/x' failed" in err and "Unauthorized" in err and "retry" in err and str(folder) in err
    assert digest(sparse_dir) == before
    assert (folder / "README.md").is_file() and (folder / "model.safetensors").is_file()
    # the prepared folder can be pushed again as it is
    monkeypatch.undo()
    assert hub.is_prepared_folder(folder)


def test_offline_push_fails_cleanly_without_interception(sparse_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = hub.prepare_push_folder(sparse_dir, tmp_path / "upload")
    with pytest.raises(hub.PushError, match="failed"):
        hub.upload(folder, "me/x")
    assert (folder / "model.safetensors").is_file()


def test_push_dry_run_and_bad_input(sparse_dir, tmp_path, capsys):
    assert cli_main(["push", str(tmp_path / "nowhere"), "--repo-id", "me/x"]) == 2
    assert "not a saved model directory" in capsys.readouterr().err
    assert cli_main(["push", str(sparse_dir), "--repo-id", "me/x", "--dry-run", "--output", str(tmp_path / "u")]) == 0
    assert (tmp_path / "u" / "README.md").is_file()
