"""`unlearn.exclude`: partial grid points left out of the plan (pipeline/grid.py), checked against the grid's axes."""

import json
import sys
from pathlib import Path

import pytest
from sau_testing import OneProcess

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import RecipeError, run_recipe, validate
from sau_trainer.pipeline.runner import hash_tasks
from sau_trainer.pipeline.stages import plan

sys.path.insert(0, str(Path(__file__).parent))
from grid_worker import install_stand_ins  # noqa: E402

RECIPE = {"name": "grid", "model": {"shape": "tiny"}, "prune": {"method": ["magnitude", "wanda"]},
          "unlearn": {"objective": ["npo", "graddiff"], "sau": [False, True], "learning_rate": [1e-3],
                      "seed": [0, 1]},
          "report": {"plot": False}}


def hashes(recipe: dict) -> dict[str, str]:
    tasks = plan(validate(recipe))
    hash_tasks(tasks)
    return {t.name: t.hash for t in tasks}


def with_exclude(exclude, **unlearn) -> dict:
    return {**RECIPE, "unlearn": {**RECIPE["unlearn"], **unlearn, "exclude": exclude}}


def test_excluded_points_are_not_planned_and_every_other_task_keeps_its_hash():
    full = hashes(RECIPE)
    kept = hashes(with_exclude([{"model": "dense", "sau": True}, {"method": "wanda", "objective": "graddiff",
                                                                  "seed": 1}]))
    gone = set(full) - set(kept)
    assert not set(kept) - set(full)
    dense_sau = {n for n in full if n.split("/")[-1].startswith("dense-") and "-sau-" in n}
    wanda_ga = {n for n in full if "/wanda-50-graddiff-" in n and n.endswith("-s1")}
    assert len(dense_sau) == 2 * 2 * 2 and len(wanda_ga) == 2 * 2  # an unlearn and an eval task per run
    assert gone == dense_sau | wanda_ga
    # the report is rewritten every run (not cached); every cached task is the same output as without exclude
    assert {n: h for n, h in kept.items() if n != "report"} == {n: full[n] for n in kept if n != "report"}


def test_exclude_matches_sau_config_axes_and_values_as_yaml_reads_them():
    recipe = with_exclude([{"sau_alpha": 1, "learning_rate": "1e-3", "objective": "npo"}], sau_alpha=[0.1, 1.0])
    names = {n for n in hashes(recipe) if n.startswith("models/") and "-sau_alpha=" in n}
    assert names and not [n for n in names if "-npo-" in n and "sau_alpha=1-" in n]
    assert [n for n in names if "-npo-" in n and "sau_alpha=0.1-" in n]
    assert [n for n in names if "-graddiff-" in n and "sau_alpha=1-" in n]


def test_every_problem_of_exclude_is_one_line_naming_the_valid_axes_and_values():
    with pytest.raises(RecipeError) as err:
        validate(with_exclude([{"sed": 0}, {"model": "dens"}, {"model": "dense", "method": "wanda"}, {},
                               {"learning_rate": 0.5, "sau_alpha": 0.1}]))
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 6, lines
    assert "unknown key 'unlearn.exclude[0].sed'" in lines[0] and "did you mean 'unlearn.exclude[0].seed'?" in lines[0]
    assert "model, objective, sau, learning_rate, seed, method, sparsity" in lines[0]
    assert "unlearn.exclude[1].model: 'dens' is not one of the grid's values dense, sparse; did you mean 'dense'?" \
        in lines[1]
    assert "unlearn.exclude[2]: no run of the grid has model: dense, method: wanda together" in lines[2]
    assert "unlearn.exclude[3]: expected a mapping of grid axes to values" in lines[3] and "got {}" in lines[3]
    assert "unlearn.exclude[4].learning_rate: 0.5 is not one of the grid's values 0.001" in lines[4]
    assert "unknown key 'unlearn.exclude[4].sau_alpha'" in lines[5]
    with pytest.raises(RecipeError, match=r"unlearn\.exclude: leaves out every run of the grid"):
        validate(with_exclude([{"seed": 0}, {"seed": 1}]))
    with pytest.raises(RecipeError, match=r"unlearn\.exclude\[0\]: expected a mapping, got 3"):
        validate(with_exclude([3]))


def test_a_bad_exclude_is_a_one_line_error_at_dry_run(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("model: {shape: tiny}\nprune: {method: [magnitude]}\nunlearn: {exclude: [{model: dense, sau: yes}]}\n")
    assert cli_main(["run", str(path), "--dry-run", "unlearn.exclude=[{modle: dense}]"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'unlearn.exclude[0].modle'" in err and "Traceback" not in err
    assert cli_main(["run", str(path), "--dry-run", "--output-dir", str(tmp_path / "o")]) == 0
    listed = capsys.readouterr().out
    assert "models/dense-npo-plain-lr1e-05-s0" in listed and "dense-npo-sau" not in listed


def test_the_report_does_not_list_excluded_runs_as_pending(tmp_path, monkeypatch):
    from sau_trainer.pipeline import STAGES

    for kind, stage in list(STAGES.items()):
        monkeypatch.setitem(STAGES, kind, stage)  # restored after the test
    install_stand_ins()
    recipe = {**with_exclude([{"model": "dense", "sau": True}]), "prune": {"method": ["magnitude"]}}
    run_recipe(validate(recipe), tmp_path, state=OneProcess())
    report = json.loads((tmp_path / "report.json").read_text())
    assert "pending" not in report
    names = {r["name"] for r in report["runs"]}
    assert "dense-npo-plain-lr0.001-s0" in names and not [n for n in names if n.startswith("dense-") and "-sau-" in n]
    assert "magnitude-50-npo-sau-lr0.001-s1" in names
