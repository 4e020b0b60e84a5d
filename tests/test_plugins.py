"""The extension contract: register_objective / register_pruner / register_benchmark add to the one registry of
each kind, an objective's own `params` come from objective_args and are checked once by SAUConfig, and a recipe's
`plugins:` make a plugin's names usable in the schema, the planner, the memory estimate and the command line."""

import shutil
from pathlib import Path

import pytest
from sau_testing import registries_restored

from sau_trainer import SAUConfig, register_benchmark, register_objective, register_pruner
from sau_trainer.cli import main as cli_main
from sau_trainer.data.benchmarks import BENCHMARKS, TofuStyleBenchmark
from sau_trainer.objectives import OBJECTIVES, GradAscent
from sau_trainer.pipeline import RecipeError, plan, validate
from sau_trainer.plugins import load_plugin
from sau_trainer.pruning.registry import PRUNERS

PLUGIN = Path(__file__).parent / "plugins" / "my_plugin.py"
RECIPE = """plugins: [my_plugin.py]
model: {shape: tiny}
prune: {method: [every_other]}
unlearn: {objective: [scaled_ga], sau: [true], objective_args: {scaled_ga: {scale: SCALE}}}
"""


@pytest.fixture(autouse=True)
def registries():
    """Each test starts from the built-in registries and leaves them so (plugin modules forgotten too)."""
    with registries_restored():
        yield


def _recipe(tmp_path, scale="0.5") -> Path:
    shutil.copy(PLUGIN, tmp_path / "my_plugin.py")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("SCALE", scale))
    return path


def test_the_decorators_add_to_the_one_registry_and_refuse_a_taken_name():
    @register_objective
    class Halved(GradAscent):
        name = "halved_ga"

    @register_pruner
    class Nothing:
        name = "nothing"
        statistic = None

        def prune(self, weight, stat, sparsity, structure, **options):
            return weight, weight != 0, {}

    assert OBJECTIVES["halved_ga"] is Halved and isinstance(PRUNERS["nothing"], Nothing)
    bench = register_benchmark(TofuStyleBenchmark("my-bench", "a copy of TOFU's protocol"))
    assert BENCHMARKS["my-bench"] is bench

    class OtherNPO(GradAscent):
        name = "npo"

    with pytest.raises(ValueError, match="objective named 'npo' is already registered"):
        register_objective(OtherNPO)
    Nothing.name = "magnitude"
    with pytest.raises(ValueError, match="pruner named 'magnitude' is already registered"):
        register_pruner(Nothing)
    with pytest.raises(ValueError, match="benchmark named 'tofu' is already registered"):
        register_benchmark(TofuStyleBenchmark("tofu", "another"))
    with pytest.raises(TypeError, match="subclass of sau_trainer.objectives.Objective"):
        register_objective(Nothing)
    assert PRUNERS["magnitude"].name == "magnitude" and OBJECTIVES["npo"].__name__ == "NPO"


def test_an_objectives_params_come_from_objective_args_and_are_checked_once(tmp_path):
    load_plugin(str(PLUGIN))
    cls = OBJECTIVES["scaled_ga"]
    args = SAUConfig(output_dir=str(tmp_path), use_cpu=True, objective="scaled_ga",
                     objective_args={"scaled_ga": {"scale": 0.5}})
    assert cls(args).params.scale == 0.5
    assert cls(SAUConfig(output_dir=str(tmp_path), use_cpu=True, objective="scaled_ga")).params.scale == 1.0
    with pytest.raises(ValueError, match=r"^objective_args\.scaled_ga\.scale: scale must be > 0, got -1$"):
        SAUConfig(output_dir=str(tmp_path), use_cpu=True, objective_args={"scaled_ga": {"scale": -1}})
    with pytest.raises(ValueError, match=r"scaled_ga\.scal: .*did you mean objective_args\.scaled_ga\.scale\?"):
        SAUConfig(output_dir=str(tmp_path), use_cpu=True, objective_args={"scaled_ga": {"scal": 1.0}})
    with pytest.raises(ValueError, match="objective_args.graddiff: the objective 'graddiff' declares no params"):
        SAUConfig(output_dir=str(tmp_path), use_cpu=True, objective_args={"graddiff": {"beta": 0.2}})


def test_a_recipes_plugin_is_usable_at_dry_run_and_its_bad_settings_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["run", str(_recipe(tmp_path)), "--output", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "unlearn   models/every_other-50-scaled_ga-sau-lr1e-05-s0" in printed
    memory_rows = printed.split("memory per device")[1]
    assert "models/finetuned+every_other-50" in memory_rows and "scaled_ga" in memory_rows
    for scale, said in (("-1", "objective_args.scaled_ga.scale: scale must be > 0, got -1"),
                        ("0.5, scal: 2", "unknown key 'unlearn.objective_args.scaled_ga.scal'; did you mean "
                                         "'unlearn.objective_args.scaled_ga.scale'?")):
        assert cli_main(["run", str(_recipe(tmp_path, scale)), "--output", str(out), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert said in err and len([line for line in err.splitlines() if line.startswith("  - ")]) == 1
    assert not out.exists()


def test_the_plugins_params_and_code_enter_the_hash_of_the_tasks_that_use_them(tmp_path):
    from sau_trainer.pipeline.schema import load_recipe

    def settings(recipe):
        return {t.name: t.settings for t in plan(recipe)}

    first = settings(load_recipe(_recipe(tmp_path)))
    unlearn = first["models/every_other-50-scaled_ga-sau-lr1e-05-s0"]
    assert unlearn["unlearn"]["args"]["objective_args"] == {"scaled_ga": {"scale": 0.5}}
    assert unlearn["plugins"] == first["models/finetuned+every_other-50"]["plugins"]
    assert unlearn["plugins"][0]["file"] == "my_plugin.py"
    assert "plugins" not in first["models/finetuned"]  # training uses no plugin: not recomputed
    (tmp_path / "my_plugin.py").write_text(PLUGIN.read_text() + "\n# changed\n")
    changed = settings(load_recipe(tmp_path / "recipe.yaml"))
    assert changed["models/finetuned+every_other-50"] != first["models/finetuned+every_other-50"]
    assert changed["models/finetuned"] == first["models/finetuned"]
    plain = settings(validate({"model": {"shape": "tiny"}, "prune": {"method": ["magnitude"]}}))
    assert all("plugins" not in s for s in plain.values())  # no plugins: every existing hash unchanged


def test_a_plugin_that_fails_to_load_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no luck')\n")
    for entry, said in ((str(tmp_path / "broken.py"), "RuntimeError: no luck"),
                        (str(tmp_path / "missing.py"), "no plugin file at"),
                        ("no_such_module_here", "ModuleNotFoundError")):
        with pytest.raises(RecipeError, match=f"plugins\\[0\\]: cannot load .*{said}"):
            validate({"plugins": [entry], "model": {"shape": "tiny"}})


def test_every_name_the_schema_planner_memory_estimate_and_cli_accept_comes_from_a_registry(tmp_path, capsys):
    """Entries registered at run time (no plugin file, no edit of the package) are accepted by each reader."""

    @register_objective
    class RunTime(GradAscent):
        name = "runtime_ga"
        label = "Run-time GA"

    @register_pruner
    class RunTimePruner:
        name = "runtime_pruner"
        statistic = None

        def prune(self, weight, stat, sparsity, structure, **options):
            return weight, weight != 0, {}

    register_benchmark(TofuStyleBenchmark("runtime-tofu", "TOFU's protocol on local files"))
    assert validate({"model": {"shape": "tiny"}, "data": {"benchmark": "runtime-tofu"}}).data.benchmark == "runtime-tofu"
    recipe = {"model": {"shape": "tiny"}, "prune": {"method": ["runtime_pruner"]},
              "unlearn": {"objective": ["runtime_ga"], "sau": [True]}}
    tasks = plan(validate(recipe))  # the schema, then the planner
    assert {t.settings["method"] for t in tasks if t.kind == "prune"} == {"runtime_pruner"}
    assert {t.settings["objective"] for t in tasks if t.kind == "unlearn"} == {"runtime_ga"}
    from sau_trainer.pipeline.memory import Distributed, memory_report
    from sau_trainer.pipeline.report_format import objective_label

    lines, _ = memory_report(validate(recipe), tasks, Distributed(), (2**40, "a test device"))
    text = "\n".join(lines)
    assert "models/finetuned+runtime_pruner-50" in text and "runtime_ga" in text
    row = next(line for line in lines if "models/finetuned+runtime_pruner-50" in line).split()
    assert float(row[7]) < 5  # activations in MiB: no calibration pass, its statistic is None (was 64.1)
    assert objective_label("runtime_ga") == "Run-time GA"
    argv = ["prune", "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o"), "--method"]
    assert cli_main([*argv, "runtime_pruner"]) == 2  # the model is missing; the method is fine
    err = capsys.readouterr().err
    assert "no-model" in err and "--method" not in err
    assert cli_main([*argv, "runtime_prunr"]) == 2
    assert "--method 'runtime_prunr' is not a registered pruner" in capsys.readouterr().err


def test_the_prune_command_loads_a_plugin_for_its_method(tmp_path, capsys):
    argv = ["prune", "--model", str(tmp_path / "no-model"), "--output-dir", str(tmp_path / "o"),
            "--method", "every_other"]
    assert cli_main(argv) == 2
    assert "--method 'every_other' is not a registered pruner" in capsys.readouterr().err
    assert cli_main([*argv, "--plugin", str(PLUGIN)]) == 2  # only the missing model now
    err = capsys.readouterr().err
    assert "no-model" in err and "--method" not in err and "every_other" in PRUNERS


@pytest.mark.slow
def test_the_issues_plugin_runs_end_to_end_from_a_recipe(tmp_path, monkeypatch):
    """The plugin as written: prunes with every_other, unlearns with scaled_ga at scale 0.5, is in the report."""
    import json

    recipe = _recipe(tmp_path)
    recipe.write_text(recipe.read_text() + "torch_threads: 1\ntrain_target: {num_train_epochs: 1}\n"
                      "train_retain: {num_train_epochs: 1}\nevaluate: {max_new_tokens: 4}\n")
    recipe.write_text(recipe.read_text().replace("sau: [true]", "sau: [true], model: [sparse], num_train_epochs: 1"))
    load_plugin(str(tmp_path / "my_plugin.py"))  # the module the run imports (once per process)
    cls, seen = OBJECTIVES["scaled_ga"], []
    forget_term = cls.forget_term

    def recorded(self, model, forget, ctx):
        seen.append(self.params.scale)
        return forget_term(self, model, forget, ctx)

    monkeypatch.setattr(cls, "forget_term", recorded)
    out = tmp_path / "out"
    assert cli_main(["run", str(recipe), "--output", str(out)]) == 0
    assert seen and set(seen) == {0.5}
    sparsity = json.loads((out / "stages/models/finetuned+every_other-50/sparsity.json").read_text())
    assert sparsity["method"] == "every_other" and sparsity["measured_sparsity"] == 0.5
    report = (out / "report.md").read_text()
    assert "every_other-50-scaled_ga-sau-lr1e-05-s0 | sparse | every_other" in report


@pytest.mark.slow
@pytest.mark.distributed
def test_every_process_of_accelerate_launch_loads_the_recipes_plugins(tmp_path):
    """Both processes read the recipe, import the plugin and unlearn with its objective, data parallel."""
    import json

    from launch import accelerate_launch

    recipe = _recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("sau: [true]", "sau: [true], model: [sparse], num_train_epochs: 1, "
                                                 "per_device_train_batch_size: 5, args: {disable_tqdm: true}")
                      + "torch_threads: 1\ntrain_target: {num_train_epochs: 1, args: {disable_tqdm: true}}\n"
                      "train_retain: {num_train_epochs: 1, args: {disable_tqdm: true}}\n"
                      "evaluate: {max_new_tokens: 4}\nreport: {plot: false}\n")
    accelerate_launch("cpu_two_processes.yaml", "-m", "sau_trainer", "run", recipe, "--output", tmp_path / "out",
                      cwd=tmp_path, timeout=900)
    stage = tmp_path / "out/stages/models/every_other-50-scaled_ga-sau-lr1e-05-s0/stage.json"
    info = json.loads(stage.read_text())["info"]
    assert info["num_processes"] == 2 and info["measured_sparsity"] == 0.5
