"""Recipe checks that keep a run honest before any work: finite numbers, no bools as numbers, no credentials,
a valid Hub repository id. Called by `sau_trainer.pipeline.schema.validate`, which owns the message format
(every problem at once, each naming its key).

- NaN or infinity is never a setting: a learning rate of ``.inf`` in a grid list trains every run of that
  point to an all-NaN model, so it is refused at ``--dry-run`` with the key that holds it (``unlearn.
  learning_rate[0]``), wherever it is: a section's field, a grid list, ``args``, ``objective_args``, ``model.shape``.
- ``true`` is not a number: a bool given to a numeric SAUConfig / TrainingArguments field under ``args`` is
  refused (the typed section fields are checked by the schema itself).
- A credential (``hub_token``, ``push_to_hub_token``, any ``*_token`` or ``hf_...`` value) is refused with only
  that message, which never repeats the value: it would be written to ``OUTPUT/recipe.yaml``, ``results.json``
  and the model card. The Hub reads ``HF_TOKEN`` or the login's stored token instead.
- ``push.hub_model_id`` is checked with huggingface_hub's own validator when the recipe is read, not at upload.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from ..redact import secret_problems
from .recipe_io import RecipeError, check_size

__all__ = ["check_numbers", "check_ranges", "refuse_secrets", "repo_id_problem"]


def refuse_secrets(data: Any) -> None:
    """`RecipeError` naming every credential of a raw recipe mapping (overrides applied), and nothing else."""
    check_size(data)  # a mapping given directly (no YAML) is bounded too
    problems = secret_problems(data)
    if problems:
        raise RecipeError("invalid recipe:\n  - " + "\n  - ".join(problems))


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _default(recipe: Any, path: str) -> Any:
    """The schema's default of a section field (``unlearn.learning_rate`` -> 1e-05), None when there is none."""
    node: Any = type(recipe)
    parts = path.split("[")[0].split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        f = fields.get(part)
        if f is None:
            return None
        if f.metadata.get("section"):
            node = typing.get_type_hints(node)[part]
            continue
        if i != len(parts) - 1:
            return None
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(value, list):
            value = value[0] if value else None
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    return None


def check_numbers(recipe: Any, errors: list[str]) -> None:
    """Every NaN or infinite number anywhere in the recipe, by key path (one message per key; a key already
    named by another problem is not named twice)."""
    stack: list[tuple[Any, str]] = [(recipe, "")]
    seen: set[int] = set()
    found: list[tuple[str, float]] = []
    while stack:
        node, path = stack.pop()
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            stack.extend((getattr(node, f.name), f"{path}.{f.name}" if path else f.name)
                         for f in reversed(dataclasses.fields(node)))
        elif isinstance(node, dict | list | tuple):
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else ((f"[{i}]", v) for i, v in enumerate(node))
            stack.extend((v, f"{path}{k}" if isinstance(node, list | tuple) else f"{path}.{k}")
                         for k, v in reversed(list(items)))
        elif isinstance(node, float) and not math.isfinite(node):
            found.append((path, node))
    named = " ".join(errors)
    for path, value in found:
        if f"{path}:" in named or f"{path.rsplit('[', 1)[0]}:" in named:  # already named, or its list is
            continue
        default = _default(recipe, path)
        hint = f"; e.g. {_format(default)} (the default)" if default is not None else ""
        errors.append(f"{path}: must be a finite number, got {_format(value)} (NaN and infinity are not "
                      f"settings){hint}")
        named += f" {path}:"


def _numeric(tp: Any) -> bool:
    """Whether an annotation takes only numbers (``float``, ``int``, ``float | None``)."""
    if tp in (int, float):
        return True
    options = [o for o in typing.get_args(tp) if o is not type(None)]
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return union and bool(options) and all(o in (int, float) for o in options)


def _numeric_fields() -> set[str]:
    from ..config import SAUConfig

    return {name for name, tp in typing.get_type_hints(SAUConfig).items() if _numeric(tp)}


def _check_args_numbers(recipe: Any, errors: list[str]) -> None:
    """A bool given to a numeric SAUConfig / TrainingArguments field under ``args`` or ``objective_args``."""
    numeric, named = _numeric_fields(), " ".join(errors)
    given = [(f"{name}.args", getattr(recipe, name).args) for name in ("train_target", "train_retain", "unlearn")]
    given += [(f"unlearn.objective_args.{o}", a) for o, a in recipe.unlearn.objective_args.items() if isinstance(a, dict)]
    for where, args in given:
        for key, value in args.items():
            if key not in numeric:
                continue
            values = value if isinstance(value, list) else [value]
            for i, v in enumerate(values):
                if isinstance(v, bool) and f"{key}={v!r}" not in named:  # not already said by SAUConfig
                    at = f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else "")
                    errors.append(f"{at}: expected a number, got {str(v).lower()} (a bool is not a number)")


TRAINER_UPLOAD_KEYS = ("push_to_hub", "hub_model_id", "hub_strategy")


def _check_trainer_uploads(recipe: Any, errors: list[str]) -> None:
    """The Trainer's own Hub upload under ``args`` (``push_to_hub: true``, ``hub_model_id``, ``hub_strategy``):
    it would upload checkpoints during training, outside the push stage that strips local paths and secrets."""
    for name in ("train_target", "train_retain", "unlearn"):
        args = getattr(recipe, name).args
        for key in TRAINER_UPLOAD_KEYS:
            value = args.get(key)
            if value is None or value is False or (key == "hub_strategy" and value == "every_save"):
                continue  # the Trainer's defaults: nothing is uploaded
            errors.append(f"{name}.args.{key}: the Trainer would upload checkpoints itself, without the push "
                          "stage's cleaning (local paths, the recipe); push the finished model with the recipe's "
                          "push section instead (push.push_to_hub: true, push.hub_model_id: user/name)")


def repo_id_problem(repo_id: Any, where: str = "push.hub_model_id") -> str | None:
    """Why `repo_id` is not a Hub model repository id (huggingface_hub's own rule), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        return f"{where}: expected a repository id such as user/model-name, got {repo_id!r}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return f"{where}: {repo_id!r} is not a Hub repository id ({' '.join(str(err).split())}); e.g. user/model-name"
    return None


def _range(errors: list[str], where: str, value: Any, low: float | None, high: float | None,
           low_open: bool, default: Any) -> None:
    if not isinstance(value, float | int) or isinstance(value, bool) or not math.isfinite(value):
        return  # a type or finiteness problem is named elsewhere
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if not (too_low or too_high):
        return
    bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}]" if high is not None else \
        f"{'>' if low_open else '>='} {low:g}"
    closest = high if too_high else (None if low_open else low)
    hint = f"; the closest valid value is {closest:g}" if closest is not None else \
        (f"; e.g. {_format(default)} (the default)" if default is not None else "")
    errors.append(f"{where}: must be {bounds}, got {_format(value)}{hint}")


def check_ranges(recipe: Any, errors: list[str]) -> None:
    """The float settings the schema's cross-key checks leave open, the numbers under ``args``, the repo id;
    then the finiteness of every number again (``_check`` coerces some values, e.g. objective_args)."""
    for name in ("train_target", "train_retain", "unlearn"):
        sec = getattr(recipe, name)
        if name != "unlearn":
            _range(errors, f"{name}.learning_rate", sec.learning_rate, 0, None, True, 1e-5)
        _range(errors, f"{name}.warmup_steps", sec.warmup_steps, 0, None, False, None)
        _range(errors, f"{name}.weight_decay", sec.weight_decay, 0, None, False, None)
    _range(errors, "report.utility_fraction", recipe.report.utility_fraction, 0, 1, True, 0.9)
    _check_args_numbers(recipe, errors)
    _check_trainer_uploads(recipe, errors)
    if recipe.push.hub_model_id is not None:
        problem = repo_id_problem(recipe.push.hub_model_id)
        if problem:
            errors.append(problem)
    check_numbers(recipe, errors)
