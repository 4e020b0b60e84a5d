"""A small demo end to end on the shared trained tiny models: every row, exact sparsity, crash-and-resume, push.

The recipe starts from the session fixture's target and retain models (no training here), prunes with
magnitude and wanda, unlearns with NPO plain and SAU on the dense and the sparse models, runs the
unlearn-then-prune check, evaluates, reports and pushes (the upload intercepted at huggingface_hub).
"""

import json
from pathlib import Path

import pytest
from sau_testing import OneProcess

from sau_trainer import hub
from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import STAGES, StageFailed, run_recipe, validate
from sau_trainer.pipeline.runner import read_stage
from sau_trainer.pipeline.stages import Stage

RETAIN_SPLITS = ("retain90", "real_authors_perturbed", "world_facts_perturbed")
PRUNINGS = ("magnitude-50", "wanda-50")
RUNS = [f"{start}-npo-{mode}-lr0.003-s0" for start in ("dense", *PRUNINGS) for mode in ("plain", "sau")]
THEN_PRUNED = [f"dense-npo-{mode}-lr0.003-s0+{p}" for mode in ("plain", "sau") for p in PRUNINGS]
REFERENCES = ["retain", *(f"retain+{p}" for p in PRUNINGS), "finetuned", *(f"finetuned+{p}" for p in PRUNINGS)]
CRASH_AT = "eval/magnitude-50-npo-sau-lr0.003-s0"


def recipe_for(memorized, retain) -> dict:
    return {
        "name": "e2e", "torch_threads": 1,
        "model": {"name_or_path": str(memorized.model_dir)},
        "data": {"benchmark": "synthetic", "preset": "tiny", "seed": 0, "forget_split": "forget10"},
        "train_target": {"enabled": False},
        "train_retain": {"enabled": False, "model": str(retain.model_dir)},
        "prune": {"method": ["magnitude", "wanda"], "sparsity": [0.5], "num_samples": 32, "seq_len": 64},
        "unlearn": {"model": ["dense", "sparse"], "objective": ["npo"], "sau": [False, True],
                    "learning_rate": [3e-3], "num_train_epochs": 3, "per_device_train_batch_size": 5,
                    "lr_scheduler_type": "constant", "then_prune": True, "logging_steps": 1000,
                    "args": {"disable_tqdm": True}},
        "evaluate": {"batch_size": 64, "max_new_tokens": 24},
        "report": {"keep_models": "all"},  # the resume checks compare every model file before and after
        "push": {"push_to_hub": True, "hub_model_id": "me/e2e-sau"},
    }


@pytest.fixture(scope="module")
def uploads():
    """Intercept the Hub for the whole module (module-scoped monkeypatching by hand)."""
    from huggingface_hub import HfApi

    calls = []
    saved = HfApi.create_repo, HfApi.upload_folder

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls.append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                      "card": (folder / "README.md").read_text()})
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    HfApi.create_repo = lambda self, repo_id, **kw: f"https://huggingface.co/{repo_id}"
    HfApi.upload_folder = upload_folder
    yield calls
    HfApi.create_repo, HfApi.upload_folder = saved


@pytest.fixture(scope="module")
def demo(memorized, trained_model, tmp_path_factory, uploads):
    """Run 1 crashes at an evaluation (a kill between stages); run 2 resumes and finishes."""
    retain = trained_model(RETAIN_SPLITS)
    recipe = validate(recipe_for(memorized, retain))
    out = tmp_path_factory.mktemp("e2e")
    real = STAGES["evaluate"]

    def crash(ctx, task, tmp):
        if task.name == CRASH_AT:
            raise KeyboardInterrupt("killed")  # not an Exception: like a kill, nothing is caught or cleaned
        return real.fn(ctx, task, tmp)

    STAGES["evaluate"] = Stage(crash, real.distributed, real.cached, real.help)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, out, state=OneProcess())
    finally:
        STAGES["evaluate"] = real
    stages = out / "stages"
    finished = {str(p.parent.relative_to(stages)) for p in stages.rglob("stage.json")}
    before = {p: p.stat().st_mtime_ns for p in stages.rglob("*") if p.is_file() and ".tmp" not in str(p)}
    second = run_recipe(recipe, out, state=OneProcess())
    return {"out": out, "recipe": recipe, "finished": finished, "before": before, "second": second,
            "memorized": memorized, "retain": retain}


def model_dir(demo, name: str) -> Path:
    if name == "finetuned":
        return demo["memorized"].model_dir
    if name == "retain":
        return demo["retain"].model_dir
    return demo["out"] / "stages" / "models" / name


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_stages(demo):
    finished, second = demo["finished"], demo["second"]
    assert {"models/finetuned+wanda-50", "models/wanda-50-npo-sau-lr0.003-s0", "eval/retain"} <= finished
    assert CRASH_AT not in finished
    assert finished <= set(second.skipped)
    assert CRASH_AT in second.ran and "models/finetuned+magnitude-50" not in second.ran
    for path, mtime in demo["before"].items():
        assert path.stat().st_mtime_ns == mtime, path
    assert not list((demo["out"] / "stages").rglob(".*.tmp"))


@pytest.mark.slow
def test_the_report_has_every_row_and_every_sparse_model_has_its_reported_sparsity(demo):
    out = demo["out"]
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"runs", "references", "comparisons"}
    comparisons = report["comparisons"]  # NPO: SAU against plain on 3 models, the penalty on 2; two metrics each
    assert [(c["pruning"], c["a"], c["metric"]) for c in comparisons] == [
        (p, a, m) for p, a in [(None, "sau"), ("magnitude", "sau"), ("magnitude", "sparse-plain"), ("wanda", "sau"),
                               ("wanda", "sparse-plain")] for m in ("forget_quality_log10", "forget_rouge")]
    refs = {(r["pruning"], r["target_sparsity"]): r for r in report["references"] if r["model"] == "finetuned"}
    for c in comparisons:  # one seed: fewer than 3 paired seeds, nothing can be concluded
        assert c["seeds"] == 1 and c["verdict"] == "inconclusive" and c["objective"] == "npo"
        # the band's bottom: 85% (the default band) of the comparison's own starting model's utility (the pruned
        # model for SAU vs plain on it and for the sparsity penalty; the finetuned model on the dense one)
        start = refs[(c["pruning"], c["target_sparsity"])]["metrics"]["model_utility"]
        assert c["utility_floor"] == pytest.approx(0.85 * start) and c["band"]["fractions"] == [0.85, 0.95]
        assert c["points"] == "final" and isinstance(c["fragile"], bool) and c["resolution"]["n"] == 20
    assert [r["name"] for r in report["references"]] == REFERENCES
    assert sorted(r["name"] for r in report["runs"]) == sorted(RUNS + THEN_PRUNED)
    for row in report["runs"] + report["references"]:
        base = ["name", "model", "pruning", "target_sparsity", "measured_sparsity", "objective", "sau",
                "learning_rate", "seed", "metrics"]
        assert list(row)[: len(base)] == base and set(list(row)[len(base):]) <= {"robustness"}  # keys only added
        overall, per_matrix = hub.weight_sparsity(model_dir(demo, row["name"]))
        assert row["measured_sparsity"] == overall, row["name"]  # counted in the saved weights
        if row["pruning"]:
            assert row["target_sparsity"] == 0.5 and overall == 0.5 and set(per_matrix.values()) == {0.5}
            assert row["model"] == "retain" or 0 <= row["metrics"]["forget_quality_pruned_retain"] <= 1
        else:
            assert row["target_sparsity"] == 0.0 and overall < 0.01
        assert row["metrics"]["model_utility"] > 0
    runs = {r["name"]: r for r in report["runs"]}
    refs = {r["name"]: r for r in report["references"]}
    assert refs["retain"]["metrics"]["forget_quality"] == 1.0
    assert runs["dense-npo-sau-lr0.003-s0"]["model"] == "dense" and runs[RUNS[3]]["model"] == "sparse"
    assert runs[THEN_PRUNED[0]]["model"] == "dense" and runs[THEN_PRUNED[0]]["pruning"] == "magnitude"
    assert runs[RUNS[3]]["sau"] is True and runs[RUNS[3]]["objective"] == "npo"
    # unlearning did something: every run forgets more than the model it started from
    for name, r in runs.items():
        start = "finetuned" if name.startswith("dense") and "+" not in name else f"finetuned+{name.split('-npo')[0]}"
        if "+" in name:
            start = f"finetuned+{name.split('+')[1]}"
        assert r["metrics"]["forget_rouge"] < refs[start]["metrics"]["forget_rouge"], name
    md = (out / "report.md").read_text()
    assert "## Unlearn, then prune" in md and all(name in md for name in RUNS + REFERENCES)
    assert md.index("## What this run shows") < md.index("## How to read this report") < md.index("## References")
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert (out / "robustness.png").stat().st_size > 10_000  # the unlearn-then-prune check
    assert (out / "recipe.yaml").is_file()


@pytest.mark.slow
def test_push_uploads_the_first_sparse_sau_run(demo, uploads):
    assert uploads and uploads[-1]["repo_id"] == "me/e2e-sau"
    files = uploads[-1]["files"]
    for name in ("model.safetensors", "sparsity.json", "sparsity_masks.safetensors", "results.json", "README.md",
                 "tokenizer.json", "sau_state.safetensors"):
        assert name in files
    card = uploads[-1]["card"]
    assert "magnitude-50-npo-sau-lr0.003-s0" in card and "| Model utility |" in card
    info = read_stage(demo["out"] / "stages" / "push")["info"]
    assert info["run"] == "magnitude-50-npo-sau-lr0.003-s0" and info["url"].endswith("commit/1")
    # and by hand, from the output directory, another run
    n = len(uploads)
    assert cli_main(["push", str(demo["out"]), "--repo-id", "me/other", "--run", "wanda-50-npo-plain-lr0.003-s0",
                     "--output", str(demo["out"] / "manual-push")]) == 0
    assert len(uploads) == n + 1 and "wanda-50-npo-plain-lr0.003-s0" in uploads[-1]["card"]


@pytest.mark.slow
def test_a_third_run_is_all_cached_and_a_changed_setting_recomputes(demo, uploads):
    third = run_recipe(demo["recipe"], demo["out"], state=OneProcess())
    assert third.ran == ["report"]
    changed = validate({**demo["recipe"].to_dict(), "evaluate": {"batch_size": 64, "max_new_tokens": 20}})
    from sau_trainer.pipeline import plan
    from sau_trainer.pipeline.runner import hash_tasks, is_done

    tasks = plan(changed)
    hash_tasks(tasks)
    stale = [t.name for t in tasks if not is_done(demo["out"] / "stages" / t.name, t)]
    assert stale and all(n.startswith(("eval/", "report", "push")) for n in stale)  # models are reused


@pytest.mark.slow
def test_a_failed_push_in_a_run_says_so_and_keeps_every_output(demo, monkeypatch):
    from huggingface_hub import HfApi

    def offline(self, repo_id, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    out = demo["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "stages" / "models").rglob("*") if p.is_file()}
    recipe = validate({**demo["recipe"].to_dict(), "push": {"push_to_hub": True, "hub_model_id": "me/other"}})
    with pytest.raises(StageFailed, match=r"(?s)push to 'me/other' failed.*offline.*sau-trainer push"):
        run_recipe(recipe, out, state=OneProcess())
    assert (out / "report.json").is_file() and read_stage(out / "stages" / "push")["info"]["repo_id"] == "me/e2e-sau"
    assert {p: p.stat().st_mtime_ns for p in (out / "stages" / "models").rglob("*") if p.is_file()} == before
