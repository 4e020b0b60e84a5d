"""Recipe validation and overrides: every problem is caught before any work, with the key named."""

from pathlib import Path

import pytest
import yaml

from sau_trainer.pipeline import RecipeError, apply_overrides, describe_keys, load_recipe, plan, validate
from sau_trainer.pipeline.schema import parse_override, recipe_to_yaml, yaml_load

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
MINIMAL = {"model": {"shape": "tiny"}}


def errors_of(data) -> str:
    with pytest.raises(RecipeError) as info:
        validate(data)
    return str(info.value)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_in_the_repository_validates_and_plans(path):
    recipe = load_recipe(path)
    if recipe.data.benchmark == "synthetic":
        tasks = plan(recipe)  # the tofu ones would read the data to fingerprint it
        assert tasks[-1].kind in ("report", "push")
    # the resolved recipe round-trips through YAML
    assert validate(yaml_load(recipe_to_yaml(recipe))) == recipe


def test_the_repository_has_the_promised_recipes():
    names = {str(p.relative_to(ROOT / "recipes")) for p in RECIPES}
    assert "demo.yaml" in names
    assert any(n.startswith("llama-3.2-1b/tofu/") for n in names)
    assert any(n.startswith("llama-3.1-8b/tofu/") for n in names)
    for folder in ("llama-3.2-1b", "llama-3.1-8b"):
        assert (ROOT / "recipes" / folder / "README.md").is_file()
    for cfg in ("single_gpu.yaml", "multi_gpu.yaml"):
        assert yaml.safe_load((ROOT / "recipes" / "accelerate" / cfg).read_text())["distributed_type"]


def test_unknown_keys_name_the_closest_valid_one():
    msg = errors_of({**MINIMAL, "unlearn": {"learnig_rate": 1e-4}})
    assert "unknown key 'unlearn.learnig_rate'" in msg and "did you mean 'unlearn.learning_rate'" in msg
    msg = errors_of({**MINIMAL, "prun": {}})
    assert "unknown key 'prun'" in msg and "did you mean 'prune'" in msg
    # keys passed through to TrainingArguments / SAUConfig are checked against them too
    msg = errors_of({**MINIMAL, "unlearn": {"args": {"max_grad_nrom": 1.0}}})
    assert "unlearn.args.max_grad_nrom" in msg and "max_grad_norm" in msg
    msg = errors_of({**MINIMAL, "train_target": {"args": {"saliency_loss": "x"}}})  # an SAUConfig-only field
    assert "train_target.args.saliency_loss" in msg


def test_wrong_types_and_values_are_rejected_with_the_key():
    msg = errors_of({**MINIMAL, "unlearn": {"learning_rate": "fast", "sau": "maybe", "seed": 1.5}})
    assert "unlearn.learning_rate: expected a number, got 'fast'" in msg
    assert "unlearn.sau: expected true or false" in msg
    assert "unlearn.seed: expected an integer" in msg
    msg = errors_of({**MINIMAL, "prune": {"method": ["magnitud"]}})
    assert "prune.method[0]" in msg and "did you mean 'magnitude'" in msg
    msg = errors_of({**MINIMAL, "unlearn": {"objective": ["nop"]}})
    assert "unlearn.objective[0]" in msg and "'npo'" in msg
    assert "model.shape" in errors_of({"model": {"shape": "huge"}})
    assert "exactly one of" in errors_of({"model": {}})
    assert "prune.sparsity[0]" in errors_of({**MINIMAL, "prune": {"sparsity": 1.5}})
    assert "push.hub_model_id" in errors_of({**MINIMAL, "push": {"push_to_hub": True}})
    assert "then_prune" in errors_of({**MINIMAL, "unlearn": {"model": ["sparse"], "then_prune": True}})
    assert "version" in errors_of({**MINIMAL, "version": 7})


def test_yaml_numbers_are_yaml_1_2():
    data = yaml_load("a: 1e-5\nb: 2:4\nc: 3\nd: 1.0e-3\ne: [1, 2.5]\nf: true")
    assert data == {"a": 1e-5, "b": "2:4", "c": 3, "d": 1e-3, "e": [1, 2.5], "f": True}


def test_scalars_are_one_item_lists_and_ints_are_floats():
    r = validate({**MINIMAL, "unlearn": {"learning_rate": 2, "objective": "npo", "sau": True}})
    assert r.unlearn.learning_rate == [2.0] and r.unlearn.objective == ["npo"] and r.unlearn.sau == [True]
    assert isinstance(r.unlearn.learning_rate[0], float)


def test_overrides_use_one_syntax():
    assert parse_override("unlearn.learning_rate=2e-4") == (["unlearn", "learning_rate"], 2e-4)
    assert parse_override("unlearn.sau=[false,true]") == (["unlearn", "sau"], [False, True])
    assert parse_override("prune.structure=2:4") == (["prune", "structure"], "2:4")
    data = apply_overrides(MINIMAL, ["unlearn.learning_rate=2e-4", "unlearn.objective=[npo]",
                                     "prune.enabled=false", "unlearn.model=dense", "name=x"])
    r = validate(data)
    assert r.unlearn.learning_rate == [2e-4] and r.unlearn.objective == ["npo"] and not r.prune.enabled
    assert r.name == "x" and MINIMAL == {"model": {"shape": "tiny"}}  # the input is not modified
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("unlearn.learning_rate")
    with pytest.raises(RecipeError, match="did you mean 'unlearn.learning_rate'"):
        validate(apply_overrides(MINIMAL, ["unlearn.learningrate=1e-3"]))


def test_load_recipe_applies_overrides_and_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {shape: tiny}\nunlearn: {learning_rate: [1.0e-3]}\n")
    assert load_recipe(path, ["unlearn.learning_rate=5e-4"]).unlearn.learning_rate == [5e-4]
    path.write_text("model: {shape: tiny}\nunlearn: {learning_rat: 1}\n")
    with pytest.raises(RecipeError, match=r"(?s)r\.yaml.*'unlearn\.learning_rate'"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="no recipe file"):
        load_recipe(tmp_path / "missing.yaml")


def test_every_key_has_help():
    rows = describe_keys()
    assert len(rows) > 60
    assert all(help_text for _, _, help_text in rows), [k for k, _, h in rows if not h]


def test_the_grid_expands_to_one_task_per_point():
    r = validate({**MINIMAL, "unlearn": {"objective": ["npo", "graddiff"], "learning_rate": [1e-4, 1e-3],
                                         "seed": [0, 1], "then_prune": True},
                  "prune": {"method": ["magnitude", "wanda"]}})
    tasks = plan(r)
    unlearn = [t for t in tasks if t.kind == "unlearn"]
    assert len(unlearn) == 3 * 2 * 2 * 2 * 2  # (dense, 2 pruned) x objectives x sau x lrs x seeds
    evals = {t.name for t in tasks if t.kind == "evaluate"}
    assert {"eval/finetuned", "eval/retain", "eval/finetuned+magnitude-50", "eval/retain+wanda-50"} <= evals
    assert "eval/dense-npo-sau-lr0.0001-s1+wanda-50" in evals  # unlearn, then prune
    assert len({t.name for t in tasks}) == len(tasks)


def test_a_tofu_recipe_plans_from_a_local_copy_and_hashes_its_rows(tmp_path):
    from sau_trainer.data.synthetic import write_benchmark
    from sau_trainer.pipeline.runner import hash_tasks

    data = tmp_path / "tofu"
    paths = write_benchmark(data, "tiny", 0)
    recipe = ROOT / "recipes/llama-3.2-1b/tofu/sau_forget10.yaml"
    tasks = plan(load_recipe(recipe, [f"data.data_dir={data}"]))
    hash_tasks(tasks)
    train = next(t for t in tasks if t.name == "models/finetuned")
    assert train.settings["splits"] == ["full"] and train.settings["data"]["rows"]
    assert train.settings["train"]["effective_batch_size"] == 32 and train.settings["train"]["bf16"] is True
    paths["forget10"].write_text(paths["forget10"].read_text().replace("a", "b", 1))  # one changed row
    again = plan(load_recipe(recipe, [f"data.data_dir={data}"]))
    hash_tasks(again)
    assert all(a.hash != b.hash for a, b in zip(tasks, again, strict=True) if a.kind != "report")


@pytest.mark.parametrize("override", ["model.dtype=bfloat16", "model.attn_implementation=eager"])
def test_how_a_ready_model_is_loaded_enters_every_hash(tmp_path, override):
    """With a ready-made target and retain model there is no training task to carry these settings."""
    from sau_trainer.pipeline.runner import hash_tasks

    model_dir = tmp_path / "ready"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    ready = [f"model.name_or_path={model_dir}", "model.shape=null", "train_target.enabled=false",
             "train_retain.enabled=false", f"train_retain.model={model_dir}"]
    before = plan(load_recipe(ROOT / "recipes/demo.yaml", ready))
    after = plan(load_recipe(ROOT / "recipes/demo.yaml", [*ready, override]))
    hash_tasks(before)
    hash_tasks(after)
    changed = {a.name for a, b in zip(before, after, strict=True) if a.hash != b.hash}
    assert {t.name for t in before if t.kind in ("prune", "unlearn", "evaluate")} <= changed


def test_optimizer_and_schedule_names_are_checked_before_any_work():
    with pytest.raises(RecipeError, match="unlearn.optim: 'adamw_torh' is not known; did you mean 'adamw_torch'"):
        load_recipe(ROOT / "recipes/demo.yaml", ["unlearn.optim=adamw_torh"])
    with pytest.raises(RecipeError, match="did you mean 'cosine'"):
        load_recipe(ROOT / "recipes/demo.yaml", ["train_target.lr_scheduler_type=cosin"])


def test_sparsities_that_share_an_output_name_are_rejected():
    with pytest.raises(RecipeError, match="share the output name"):
        plan(load_recipe(ROOT / "recipes/demo.yaml", ["prune.sparsity=[0.5,0.501]"]))


def test_a_misspelled_model_shape_field_is_rejected():
    with pytest.raises(RecipeError, match="unknown key 'model.shape.hidden_sise'.*did you mean 'model.shape.hidden_size'"):
        load_recipe(ROOT / "recipes/demo.yaml", ["model.shape={hidden_sise: 64, num_hidden_layers: 2}"])
