"""A recipe is refused before any work when a number is NaN or infinite (anywhere, grid lists included), a bool
stands for a number, a credential is given, the repo id is not one, or its YAML expands beyond a sane size."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sau_trainer.cli import main as cli_main
from sau_trainer.pipeline import validate
from sau_trainer.pipeline.recipe_io import MAX_RECIPE_NODES, RecipeError, yaml_load
from sau_trainer.pipeline.schema import load_recipe

BASE = {"model": {"shape": "tiny"}}
TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@pytest.fixture
def recipe_file(tmp_path):
    def write(data=None, text=None) -> Path:
        path = tmp_path / "recipe.yaml"
        path.write_text(text if text is not None else yaml.safe_dump(data or BASE))
        return path
    return write


def dry_run(path, *overrides, capsys):
    code = cli_main(["run", str(path), "--dry-run", *overrides])
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------------------- NaN and infinity
@pytest.mark.parametrize("override, key", [
    ("unlearn.learning_rate=[.inf]", "unlearn.learning_rate[0]"),
    ("unlearn.learning_rate=[1e-5, .nan]", "unlearn.learning_rate[1]"),
    ("unlearn.learning_rate=['inf']", "unlearn.learning_rate[0]"),  # a string YAML leaves, float() reads
    ("unlearn.num_train_epochs=.nan", "unlearn.num_train_epochs"),
    ("train_target.learning_rate=.inf", "train_target.learning_rate"),
    ("train_retain.warmup_steps=.nan", "train_retain.warmup_steps"),
    ("evaluate.relearn_epochs=.inf", "evaluate.relearn_epochs"),
    ("report.utility_fraction=.nan", "report.utility_fraction"),
    ("unlearn.sau_alpha=[0.1, -.inf]", "unlearn.sau_alpha[1]"),
    ("unlearn.args.max_grad_norm=.inf", "unlearn.args.max_grad_norm"),
    ("unlearn.objective_args={npo: {npo_beta: .nan}}", "unlearn.objective_args.npo.npo_beta"),
])
def test_a_non_finite_setting_is_refused_at_dry_run_naming_its_key(recipe_file, capsys, override, key):
    code, err = dry_run(recipe_file(), override, capsys=capsys)
    assert code == 2, err
    assert f"{key}: must be a finite number" in err
    assert "Traceback" not in err and "to run" not in err


def test_the_message_offers_the_default_and_every_problem_is_named_at_once():
    with pytest.raises(RecipeError) as info:
        validate({**BASE, "unlearn": {"learning_rate": [float("inf")], "lerning_rate": 1},
                  "prune": {"sparsity": [float("nan")], "num_samples": "many"}})
    text = str(info.value)
    assert "unlearn.learning_rate[0]: must be a finite number, got inf" in text and "e.g. 1e-05 (the default)" in text
    assert "did you mean 'unlearn.learning_rate'?" in text  # the unknown key, in the same message
    assert "prune.sparsity[0]: must be a finite number, got nan" in text
    assert "prune.num_samples: expected an integer" in text


def test_finite_settings_still_pass():
    recipe = validate({**BASE, "unlearn": {"learning_rate": [1e-5, 2e-5], "sau_alpha": [0.0, 0.5],
                                           "args": {"max_grad_norm": 1.0}},
                       "report": {"utility_fraction": 1.0}, "train_target": {"warmup_steps": 0.1}})
    assert recipe.unlearn.learning_rate == [1e-5, 2e-5] and recipe.report.utility_fraction == 1.0


@pytest.mark.parametrize("override, message", [
    ("report.utility_fraction=1.5", "report.utility_fraction: must be in (0, 1], got 1.5; the closest valid value is 1"),
    ("report.utility_fraction=0", "report.utility_fraction: must be in (0, 1], got 0"),
    ("train_target.learning_rate=0", "train_target.learning_rate: must be > 0, got 0"),
    ("train_retain.warmup_steps=-2", "train_retain.warmup_steps: must be >= 0, got -2; the closest valid value is 0"),
    ("unlearn.weight_decay=-0.1", "unlearn.weight_decay: must be >= 0, got -0.1; the closest valid value is 0"),
])
def test_float_settings_out_of_range_are_refused_with_the_closest_valid_value(override, message, recipe_file, capsys):
    code, err = dry_run(recipe_file(), override, capsys=capsys)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("override, key", [
    ("unlearn.sau_topk=true", "unlearn.sau_topk"),
    ("unlearn.learning_rate=[true]", "unlearn.learning_rate[0]"),
    ("unlearn.args.max_grad_norm=true", "unlearn.args.max_grad_norm"),  # a TrainingArguments field
    ("train_target.args.adam_beta2=false", "train_target.args.adam_beta2"),
])
def test_a_bool_is_not_a_number(override, key, recipe_file, capsys):
    code, err = dry_run(recipe_file(), override, capsys=capsys)
    assert code == 2 and key in err, err
    assert "true" in err.lower() or "false" in err.lower()


def test_non_finite_and_bool_command_line_numbers_are_refused(recipe_file, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["run", str(recipe_file()), "--dry-run", "--device-memory", "nan"])
    assert info.value.code == 2 and "--device-memory: expected a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli_main(["prune", "--model", "x", "--method", "magnitude", "--sparsity", "inf", "--output-dir", "o"])
    assert info.value.code == 2 and "--sparsity: expected a finite number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["run", str(recipe_file()), "--dry-run", "--num-processes", "0"])
    assert "--num-processes: expected a whole number >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- credentials
@pytest.mark.parametrize("where", ["file", "override"])
@pytest.mark.parametrize("key", ["unlearn.args.hub_token", "unlearn.push_to_hub_token", "train_target.args.hub_token",
                                 "push.token", "unlearn.objective_args.npo.hub_token"])
def test_a_token_is_never_accepted_and_never_repeated(recipe_file, tmp_path, capsys, where, key):
    data = {**BASE, "unlearn": {"objective": ["npo"]}}
    if where == "file":
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = TOKEN
        path, overrides = recipe_file(data), []
    else:
        path, overrides = recipe_file(data), [f"{key}={TOKEN}"]
    out = tmp_path / "out"
    code = cli_main(["run", str(path), "--output-dir", str(out), *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{key}: an access token is never read from a recipe" in err and "HF_TOKEN" in err
    assert "huggingface-cli login" in err and TOKEN not in err
    assert not out.exists()  # nothing written: no OUTPUT/recipe.yaml holding it


def test_a_token_value_under_any_key_is_refused():
    with pytest.raises(RecipeError) as info:
        validate({**BASE, "description": f"pushed with {TOKEN}"})
    assert "description: an access token" in str(info.value) and TOKEN not in str(info.value)
    # tokenizer settings that end in _token are not credentials; null is not a token
    assert validate({"model": {"shape": {"pad_token_id": 0, "hidden_size": 64}}}).model.shape["pad_token_id"] == 0


# ----------------------------------------------------------------------------------------- the repo id
@pytest.mark.parametrize("repo", ["a/b/c", "me/name--x", "me/-x", "https://huggingface.co/me/x", "me/x.git"])
def test_a_bad_repo_id_is_refused_when_the_recipe_is_checked(recipe_file, capsys, repo):
    code, err = dry_run(recipe_file(), f"push.hub_model_id={repo}", capsys=capsys)
    assert code == 2 and "push.hub_model_id:" in err and "not a Hub repository id" in err, err


def test_a_good_repo_id_passes():
    assert validate({**BASE, "push": {"push_to_hub": True, "hub_model_id": "me/llama-sau"}}).push.hub_model_id


# ----------------------------------------------------------------------------------------- YAML size
def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The 'billion laughs' pattern: each level lists the previous one `width` times (9**9 strings in 1.6 KB)."""
    lines = ["model: {shape: tiny}", "description: &a [" + ", ".join([f'"{"lol " * 27}"'] * width) + "]"]
    prev = "a"
    for i in range(1, levels):
        name = f"l{i}"
        lines.append(f"x{i}: &{name} [" + ", ".join([f"*{prev}"] * width) + "]")
        prev = name
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_while_loading(recipe_file, capsys):
    text = alias_bomb()
    assert 1000 < len(text.encode()) < 2000
    start = time.monotonic()
    with pytest.raises(RecipeError, match=f"expands beyond {MAX_RECIPE_NODES:,} nodes"):
        yaml_load(text)
    with pytest.raises(RecipeError, match=r"recipe.yaml: the recipe expands beyond"):
        load_recipe(recipe_file(text=text))
    code, err = dry_run(recipe_file(text=text), capsys=capsys)
    assert code == 2 and "expands beyond" in err and "Traceback" not in err
    assert time.monotonic() - start < 30  # generous: the refusal itself takes milliseconds


def test_a_shared_structure_given_directly_is_refused_too():
    level = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9  # shared, as YAML aliases are
    with pytest.raises(RecipeError, match="expands beyond"):
        validate({**BASE, "description": level})


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", "contains itself"),
    ("model: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("a: &a {k0: 1, k1: 2, k2: 3}\n" + "".join(f"{c}: &{c} {{<<: [{', '.join([f'*{p}'] * 9)}]}}\n"
                                               for p, c in zip("abcdefghi", "bcdefghij", strict=True)), "expands beyond"),
])
def test_self_reference_deep_nesting_and_merge_bombs(text, message):
    with pytest.raises(RecipeError, match=message):
        yaml_load(text)


def test_an_override_value_is_bounded_and_bad_yaml_is_one_line(recipe_file, capsys):
    code, err = dry_run(recipe_file(), "unlearn.learning_rate=[1,", capsys=capsys)
    assert code == 2 and "override 'unlearn.learning_rate': the value is not valid YAML" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_normal_recipe_is_far_below_the_bound():
    from sau_trainer.pipeline.recipe_io import check_size
    from sau_trainer.pipeline.schema import recipe_to_yaml

    demo = Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml"
    assert check_size(yaml_load(recipe_to_yaml(load_recipe(demo)))) < MAX_RECIPE_NODES // 20


@pytest.mark.slow  # a second process importing torch and transformers
def test_the_command_refuses_an_alias_bomb_within_seconds(tmp_path):
    """The whole command, as a user runs it; before the bound it was still running after 390 s."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    proc = subprocess.run([sys.executable, "-m", "sau_trainer", "run", str(path), "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expands beyond" in proc.stderr and "Traceback" not in proc.stderr


def test_an_alias_bomb_as_the_accelerate_config_is_refused_in_one_line(recipe_file, tmp_path, capsys):
    bomb = tmp_path / "accelerate.yaml"
    bomb.write_text("distributed_type: MULTI_GPU\n" + alias_bomb())
    code, err = dry_run(recipe_file(), "--accelerate-config", str(bomb), capsys=capsys)
    assert code == 2 and "expands beyond" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


@pytest.mark.parametrize("section", ["train_target", "unlearn"])
@pytest.mark.parametrize("args", [{"push_to_hub": True}, {"hub_model_id": "me/x"}, {"hub_strategy": "end"}])
def test_the_trainers_own_upload_is_refused(section, args):
    with pytest.raises(RecipeError) as info:
        validate({**BASE, section: {"args": args}})
    key = next(iter(args))
    assert f"{section}.args.{key}: the Trainer would upload checkpoints itself" in str(info.value)
    assert "push.push_to_hub: true" in str(info.value)
    validate({**BASE, section: {"args": {"push_to_hub": False}}})  # the Trainer's default is fine
