"""The recipe: loading, validation, and the names of its parts.

Everything is checked before any work starts, every problem at once: an unknown key is named with the closest
valid one, a wrong type or value is named with what was expected. The parts live in modules of their own and
are importable from here as before: the sections (`schema_sections`), the typing (`schema_types`), the unlearn
settings per objective and grid axes (`schema_unlearn`), the ``key.path=value`` overrides (`schema_overrides`).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

import yaml

from .recipe_io import RecipeError, check_size, yaml_load  # noqa: F401 - RecipeError and yaml_load: public here
from .schema_overrides import apply_overrides, parse_override  # noqa: F401 - public here
from .schema_sections import (  # noqa: F401 - public here
    DataSection,
    EvaluateSection,
    ModelSection,
    PruneSection,
    PushSection,
    Recipe,
    ReportSection,
    TrainerSettings,
    TrainSection,
    UnlearnSection,
)
from .schema_types import _build, _closest, _coerce, _not_one_of, opt  # noqa: F401 - public here
from .schema_unlearn import (  # noqa: F401 - public here
    OBJECTIVE_ARG_FIELDS,
    SWEEPABLE_TRAINER_SETTINGS,
    _name_value,
    grid_axes,
    grid_name,
    grid_points,
    objective_grids,
    objective_settings,
    section_settings,
)

RECIPE_VERSION = 1
# keys the pipeline or the grid sets for every run: refused under <section>.args and per objective
PIPELINE_KEYS = ("output_dir", "objective", "sau", "seed", "data_seed")




# ----------------------------------------------------------------------------------------- YAML
# the loader (1.2-style numbers, bounded alias expansion) lives in recipe_io; yaml_load is re-exported here


# ----------------------------------------------------------------------------------------- validation
def _check(recipe: Recipe, errors: list[str]) -> None:
    """Checks across keys and against the libraries' registries (objectives, pruners, TrainingArguments)."""
    from ..benchmarks.registry import BENCHMARKS
    from ..modeling import MODEL_SHAPES
    from ..objectives import OBJECTIVES

    d = recipe.data
    if d.benchmark not in BENCHMARKS:
        errors.append(f"data.benchmark: {_not_one_of(d.benchmark, sorted(BENCHMARKS))}")
    else:
        errors += [f"data: {p}" for p in BENCHMARKS[d.benchmark].check_options(d.subset, d.preset)]
    if recipe.torch_threads is not None and recipe.torch_threads < 1:
        errors.append(f"torch_threads: must be >= 1 or null, got {recipe.torch_threads!r}")
    m = recipe.model
    if (m.name_or_path is None) == (m.shape is None):
        errors.append("model: give exactly one of model.name_or_path (a pretrained model) and model.shape "
                      "(build one from a config)")
    if isinstance(m.shape, str) and m.shape not in MODEL_SHAPES:
        errors.append(f"model.shape: {_not_one_of(m.shape, sorted(MODEL_SHAPES))}")
    if isinstance(m.shape, dict):  # LlamaConfig ignores unknown fields: a typo would build its 7B default
        from transformers import LlamaConfig

        fields = sorted(LlamaConfig().to_dict())
        for key in m.shape:
            if key not in fields:
                errors.append(f"unknown key 'model.shape.{key}' (a LlamaConfig field); "
                              f"{_closest(key, fields, 'model.shape.')}")
    if m.shape is not None and not recipe.train_target.enabled:
        errors.append("train_target.enabled: a model built from model.shape is random; it must be trained")
    for name in ("train_target", "train_retain"):
        sec: TrainSection = getattr(recipe, name)
        _check_trainer_settings(sec, name, errors, [*_training_argument_names(), *FINETUNE_PRECISION_FIELDS])
        if sec.model is not None and sec.enabled:
            errors.append(f"{name}.model: set only with {name}.enabled: false (a ready-made model)")
    if recipe.train_target.model is not None:
        errors.append("train_target.model: the untrained target is model.name_or_path; "
                      "set train_target.enabled: false to use it as it is")
    if not recipe.train_retain.enabled and recipe.train_retain.model is None and m.shape is not None:
        errors.append("train_retain: a model built from scratch needs a retain model: enable train_retain")
    u = recipe.unlearn
    _check_trainer_settings(u, "unlearn", errors, _sau_config_names())
    for i, obj in enumerate(u.objective):
        if obj not in OBJECTIVES:
            errors.append(f"unlearn.objective[{i}]: {_not_one_of(obj, sorted(OBJECTIVES))}")
    for name in ("learning_rate",):
        for i, lr in enumerate(getattr(u, name)):
            if isinstance(lr, float) and not lr > 0:
                errors.append(f"unlearn.{name}[{i}]: must be > 0, got {lr!r}")
    for axis in ("model", "objective", "sau", "learning_rate", "seed"):
        values = getattr(u, axis)
        if len(set(map(repr, values))) != len(values):
            errors.append(f"unlearn.{axis}: repeated values in {values!r}")
    _check_objective_args(u, errors, OBJECTIVES)
    for where, given in [("unlearn.args", u.args), *((f"unlearn.objective_args.{o}", a)
                                                     for o, a in u.objective_args.items() if isinstance(a, dict))]:
        if given.get("idk_path") is not None and not os.path.isfile(str(given["idk_path"])):
            errors.append(f"{where}.idk_path: no file at {given['idk_path']!r} (one \"I don't know\" answer per line; "
                          "leave it unset for the package's own set)")
    _check_sau_grid(u, errors)
    if u.exclude:  # partial points of this recipe's grid (pipeline/grid.py)
        from .grid import check_exclude

        check_exclude(recipe, objective_grids(u), errors)
    p = recipe.prune
    from ..pruning.registry import PRUNERS

    errors += [f"prune.method[{i}]: {_not_one_of(x, list(PRUNERS))}" for i, x in enumerate(p.method) if x not in PRUNERS]
    for i, s in enumerate(p.sparsity):
        if isinstance(s, float) and not 0 <= s < 1:
            errors.append(f"prune.sparsity[{i}]: must be in [0, 1), got {s!r}")
    try:
        from ..pruning import parse_structure

        parse_structure(p.structure)
    except (ValueError, TypeError) as err:
        errors.append(f"prune.structure: {err}")
    if u.enabled and "sparse" in u.model and not p.enabled:
        errors.append("unlearn.model: 'sparse' needs prune.enabled: true (or unlearn.model: [dense])")
    if u.then_prune and not (p.enabled and "dense" in u.model):
        errors.append("unlearn.then_prune: needs prune.enabled: true and 'dense' in unlearn.model")
    for key in ("num_samples", "seq_len", "batch_size"):
        if getattr(p, key) < 1:
            errors.append(f"prune.{key}: must be >= 1")
    from .robustness import check as check_robustness

    check_robustness(recipe, errors)
    from .report_verdicts import check_recipe as check_band
    from .trajectories import check_recipe as check_trajectory

    check_band(recipe, errors)
    check_trajectory(recipe, errors)
    if recipe.evaluate.batch_size < 1 or recipe.evaluate.max_new_tokens < 0:
        errors.append("evaluate: batch_size must be >= 1 and max_new_tokens >= 0")
    from ..evaluation.compat import check_recipe as check_compat

    check_compat(recipe.evaluate, recipe.data.benchmark, errors)
    from ..evaluation.muse import check_recipe as check_muse

    check_muse(recipe, errors)
    h = recipe.push
    if h.push_to_hub and not h.hub_model_id:
        errors.append("push.hub_model_id: required with push.push_to_hub: true (e.g. user/model-name)")
    if h.push_to_hub and not (u.enabled and "sparse" in u.model):
        errors.append("push.push_to_hub: pushes an unlearned sparse model; the grid has none "
                      "(unlearn.enabled and 'sparse' in unlearn.model)")


def _check_objective_args(u: UnlearnSection, errors: list[str], objectives: dict) -> None:
    """unlearn.objective_args: known objectives; per key a section field (coerced in place) or an SAUConfig field."""
    from ..objectives.params import param_fields
    from .schema_unlearn import flat_spelling

    hints = typing.get_type_hints(UnlearnSection)
    fields = UnlearnSection.__dataclass_fields__
    sau_names = _sau_config_names()
    for obj, over in u.objective_args.items():
        where = f"unlearn.objective_args.{obj}"
        if obj not in objectives:
            errors.append(f"{where}: {_not_one_of(obj, sorted(objectives))}")
            continue
        if not isinstance(over, dict):
            errors.append(f"{where}: expected a mapping of settings, got {over!r}")
            continue
        for field_name, flat in flat_spelling(obj).items():  # beta and npo_beta: one setting, spelled twice
            if field_name in over and flat in over and over[field_name] != over[flat]:
                errors.append(f"{where}: {field_name}={over[field_name]!r} and {flat}={over[flat]!r} are the same "
                              "setting with two values; give one of them")
        for key, value in over.items():
            if key in PIPELINE_KEYS:
                errors.append(f"{where}.{key}: set by the pipeline or the grid; not allowed per objective")
            elif key in OBJECTIVE_ARG_FIELDS:
                over[key] = _coerce(value, hints[key], f"{where}.{key}", errors, dict(fields[key].metadata))
                if key == "learning_rate":
                    lrs = over[key]
                    if any(isinstance(lr, float) and not lr > 0 for lr in lrs) or len(set(map(repr, lrs))) != len(lrs):
                        errors.append(f"{where}.learning_rate: values must be > 0 and distinct, got {lrs!r}")
            elif key not in sau_names and key not in param_fields(objectives[obj]):  # SAUConfig checks values
                valid = sorted(set(OBJECTIVE_ARG_FIELDS) | set(sau_names) | set(param_fields(objectives[obj])))
                errors.append(f"unknown key '{where}.{key}'; {_closest(str(key), valid, where + '.')}")


def _check_sau_grid(u: UnlearnSection, errors: list[str]) -> None:
    """Every SAUConfig setting of every grid point, per objective, checked by SAUConfig's own check
    (`config.check_settings`: its own fields and the objectives' params; TrainingArguments fields are checked by
    name here and by TrainingArguments when a run starts). Distinct points are checked once."""
    from ..config import FLAT_NAMES, check_settings, own_fields

    own = set(own_fields()) | set(FLAT_NAMES)
    base = section_settings(u)
    found: dict[str, list[str]] = {}
    checked: dict[str, list[str]] = {}
    from ..objectives import OBJECTIVES

    for obj in u.objective:
        if obj not in OBJECTIVES or not isinstance(u.objective_args.get(obj, {}), dict):
            continue  # an unknown objective is reported once, by name, with the valid ones
        settings, _ = objective_settings(base, u.objective_args, obj)
        axes = grid_axes(settings)
        hints = typing.get_type_hints(TrainerSettings)
        for name, values in axes:
            where = f"unlearn.{name}" + (f" (objective_args.{obj})" if (u.objective_args.get(obj) or {}).get(name)
                                         is not None else "")
            if name in SWEEPABLE_TRAINER_SETTINGS:  # typed as the section's own key
                trial: list[str] = []
                values[:] = [_coerce(v, hints[name], f"{where}[{i}]", trial) for i, v in enumerate(values)]
                if isinstance(u.args.get(name), list) and len(u.args[name]) == len(values) and "(" not in where:
                    u.args[name][:] = values  # the recipe keeps the typed values (3 -> 3.0 epochs): one hash
                if name == "num_train_epochs" and any(isinstance(v, float) and v <= 0 for v in values):
                    trial.append(f"{where}: every value must be > 0, got {values!r}")
                for message in trial:
                    found.setdefault(message, [])
            if not values:
                found.setdefault(f"{where}: the list is empty", [])
            elif len({_name_value(v) for v in values}) != len(values):
                found.setdefault(f"{where}: repeated values in {values!r} (each value names its runs)", [])
        if any(not values for _, values in axes):
            continue
        for _, point in grid_points(settings):
            values = {**{k: v for k, v in point["args"].items() if k in own}, "objective": obj, "sau": True,
                      "sau_topk": point["sau_topk"], "sau_alpha": point["sau_alpha"]}
            key = repr(sorted(values.items(), key=lambda kv: kv[0]))
            if key not in checked:
                checked[key] = check_settings(values)
            for message in checked[key]:
                found.setdefault(message, []).append(obj)
    for message, objectives in found.items():
        whose = sorted(set(objectives))
        errors.append(message if not objectives else f"unlearn: {message}" if whose == sorted(set(u.objective))
                      else f"unlearn, objective {', '.join(whose)}: {message}")


def _check_trainer_settings(sec: TrainerSettings, name: str, errors: list[str], valid: list[str]) -> None:
    own = {f.name for f in dataclasses.fields(sec)}
    for key, value in sec.args.items():
        if name == "unlearn" and key in SWEEPABLE_TRAINER_SETTINGS and isinstance(value, list):
            continue  # a grid axis over a trainer setting (checked in _check_sau_grid)
        if key in own:
            errors.append(f"{name}.args.{key}: set it as {name}.{key}, not under args")
        elif key in PIPELINE_KEYS:
            errors.append(f"{name}.args.{key}: set by the pipeline or the grid; not allowed under args")
        elif key not in valid:
            errors.append(f"unknown key '{name}.args.{key}'; {_closest(key, valid, f'{name}.args.')}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
        if getattr(sec, key) < 1:
            errors.append(f"{name}.{key}: must be >= 1, got {getattr(sec, key)!r}")
    from ..config import choice_problems

    errors += [f"{name}.{p}" for p in choice_problems({k: getattr(sec, k) for k in ("optim", "lr_scheduler_type")})]
    if sec.effective_batch_size is not None and sec.effective_batch_size < 1:
        errors.append(f"{name}.effective_batch_size: must be >= 1, got {sec.effective_batch_size!r}")
    elif sec.effective_batch_size is not None and sec.effective_batch_size % sec.per_device_train_batch_size:
        errors.append(f"{name}.effective_batch_size: {sec.effective_batch_size} is not a multiple of "
                      f"per_device_train_batch_size={sec.per_device_train_batch_size}")
    if sec.num_train_epochs <= 0:
        errors.append(f"{name}.num_train_epochs: must be > 0")


def _training_argument_names() -> list[str]:
    from transformers import TrainingArguments

    return sorted(f.name for f in dataclasses.fields(TrainingArguments))


def _sau_config_names() -> list[str]:
    from ..config import setting_names

    return setting_names()


# `finetune` takes these besides TrainingArguments (train_target.args / train_retain.args): see sau_trainer.precision
FINETUNE_PRECISION_FIELDS = ("low_precision_weights", "compensated_optimizer")


def _lift_sau_config_fields(data: dict, errors: list[str]) -> None:
    """``unlearn.<SAUConfig field>`` that is not a key of the section means ``unlearn.args.<field>``.

    So any `SAUConfig` field (``low_precision_weights``, ``compensated_optimizer``, ...) can be set directly in
    the `unlearn` section or under ``unlearn.args``, with the same effect and the same task hash. A trainer
    setting of the section given as a list (``num_train_epochs: [3, 5]``) is a grid axis: it goes to args too.
    """
    u = data.get("unlearn")
    if not isinstance(u, dict):
        return
    own, sau = UnlearnSection.__dataclass_fields__, set(_sau_config_names())
    lifted = {k: v for k, v in u.items() if (k not in own and k in sau) or (k in SWEEPABLE_TRAINER_SETTINGS
                                                                            and isinstance(v, list))}
    args = u.get("args") or {}
    if not lifted or not isinstance(args, dict):
        return
    for key in lifted:
        if key in args:
            errors.append(f"unlearn.{key}: given both directly and under unlearn.args; keep one")
    data["unlearn"] = {**{k: v for k, v in u.items() if k not in lifted}, "args": {**args, **lifted}}


def _check_sau_choices(recipe: Recipe, errors: list[str]) -> None:
    """The SAUConfig fields that `finetune` takes (train_*.args), checked by SAUConfig's own choices
    (`config.choice_problems`) before any work starts (the unlearn section: `_check_sau_grid`)."""
    from ..config import choice_problems

    for name in ("train_target", "train_retain"):
        errors += [f"{name}.args.{p}" for p in choice_problems(getattr(recipe, name).args)]


def validate(data: dict | None) -> Recipe:
    """A `Recipe` from a raw mapping, or `RecipeError` listing every problem."""
    from . import recipe_guards as guards

    errors: list[str] = []
    guards.refuse_secrets(data)  # bounded size first; a credential is the only thing said, its value never
    data = dict(data or {})
    version = data.pop("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        errors.append(f"version: this sau-trainer reads recipe version {RECIPE_VERSION}, got {version!r}")
    from ..plugins import load_plugins

    if problems := load_plugins(data.get("plugins")):  # before any name is checked: they register names
        raise RecipeError("invalid recipe:\n  - " + "\n  - ".join(problems))
    _lift_sau_config_fields(data, errors)
    recipe = _build(Recipe, data, "", errors)
    guards.check_numbers(recipe, errors)  # NaN/inf: nothing below runs on them
    if not errors:
        _check(recipe, errors)
        _check_sau_choices(recipe, errors)
        guards.check_ranges(recipe, errors)
    if errors:
        raise RecipeError("invalid recipe:\n  - " + "\n  - ".join(errors))
    return recipe


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe file at {path}")
    try:
        data = yaml_load(path.read_text())
    except RecipeError as err:  # expands beyond the bound, or nests too deeply
        raise RecipeError(f"{path}: {err}") from None
    except (yaml.YAMLError, ValueError) as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if data is None and not overrides:  # nothing but blanks or comments: say so, not which key is missing
        raise RecipeError(f"the recipe file {path} is empty; a recipe needs at least a model section "
                          "(see recipes/demo.yaml)")
    if data is not None and not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    try:
        from ..plugins import resolve_paths

        return validate(apply_overrides(resolve_paths(data or {}, path.parent), overrides or []))
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML."""
    return yaml.safe_dump({"version": RECIPE_VERSION, **recipe.to_dict()}, sort_keys=False)


def describe_keys(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every key, for the documentation."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.metadata.get("section"):
            rows += describe_keys(hints[f.name], key + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
