"""The unlearn section's settings per objective and its extra grid axes (SAUConfig settings given as lists).

`objective_settings` applies ``unlearn.objective_args.<objective>`` to the section's settings; `grid_points`
expands every list-valued SAUConfig setting into grid points, named in run names by `grid_name`. These settings,
as they come out of here, are hashed into the unlearning tasks: their spelling is the cache's
(tests/test_cache_compat.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .schema_sections import TrainerSettings, UnlearnSection

# keys of unlearn.objective_args.<objective> that take the section's own field (typed as there)
OBJECTIVE_ARG_FIELDS = tuple(f for f in TrainerSettings.__dataclass_fields__ if f != "args") + (
    "learning_rate", "sau_topk", "sau_alpha")


def objective_settings(u_settings: dict, objective_args: dict, objective: str) -> tuple[dict, list | None]:
    """The unlearn settings of one objective's runs, and its learning-rate axis (None: the section's)."""
    over = dict(objective_args.get(objective) or {})
    lrs = over.pop("learning_rate", None)
    if not over:
        return u_settings, lrs
    out = dict(u_settings)
    from ..objectives import OBJECTIVES
    from ..objectives.params import param_fields

    own = set(param_fields(OBJECTIVES[objective])) if objective in OBJECTIVES else set()
    flat = flat_spelling(objective)  # a built-in's params are hashed by their flat names, as before they moved
    extra = {flat.get(k, k): v for k, v in over.items() if k not in OBJECTIVE_ARG_FIELDS and (k not in own or k in flat)}
    out.update({k: v for k, v in over.items() if k in OBJECTIVE_ARG_FIELDS})
    if params := {k: v for k, v in over.items() if k in own and k not in flat}:  # SAUConfig.objective_args
        extra["objective_args"] = {objective: params}
    if extra:
        out["args"] = {**u_settings.get("args", {}), **extra}
    return out, lrs


# ----------------------------------------------------------------------------------------- SAUConfig grid axes
# trainer settings of the unlearn section that are SAUConfig (TrainingArguments) fields: a list is a grid axis
SWEEPABLE_TRAINER_SETTINGS = ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                              "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "max_length")
def section_settings(u: UnlearnSection) -> dict:
    """The unlearn settings every run of the grid shares (trainer settings, sau_topk, sau_alpha, args)."""
    return {k: v for k, v in dataclasses.asdict(u).items()
            if k not in ("enabled", "model", "objective", "sau", "learning_rate", "seed", "then_prune",
                         "retain_split", "objective_args", "eval_steps", "eval_max_new_tokens", "eval_rows",
                         "eval_membership_inference", "exclude")}


def objective_grids(u: UnlearnSection) -> dict[str, tuple[list, list | None]]:
    """Per known objective of the grid: its points of the SAUConfig axes (`grid_points`) and its learning rates."""
    from ..objectives import OBJECTIVES

    base = section_settings(u)
    return {o: (grid_points(s), lrs) for o in u.objective if o in OBJECTIVES and isinstance(u.objective_args.get(o)
            or {}, dict) for s, lrs in [objective_settings(base, u.objective_args, o)]}


def flat_spelling(objective: str) -> dict[str, str]:
    """field -> flat SAUConfig name, for the fields of `objective`'s params that have one (``npo``: beta ->
    npo_beta); how a recipe's ``objective_args.<objective>.<field>`` is spelled in the unlearn settings."""
    from ..objectives import OBJECTIVES
    from ..objectives.params import flat_names

    return {f: flat for flat, targets in flat_names(OBJECTIVES).items() for o, f in targets if o == objective}


def _sau_config_fields() -> dict[str, dataclasses.Field]:
    """Every setting SAUConfig takes by name: its fields and the objectives' flat names (their params' fields)."""
    from ..config import FLAT_NAMES, SAUConfig
    from ..objectives import OBJECTIVES
    from ..objectives.params import flat_field

    return {**{f.name: f for f in dataclasses.fields(SAUConfig)}, **{n: flat_field(OBJECTIVES, n) for n in FLAT_NAMES}}


def _takes_lists(f: dataclasses.Field) -> bool:
    """Whether a SAUConfig field's own values are lists (then only a list of lists is a grid axis)."""
    return "list" in str(f.type).lower()


def grid_axes(settings: dict) -> list[tuple[str, list]]:
    """The extra grid axes of one objective's unlearn settings: every SAUConfig field given as a list (``sau_topk``
    and ``sau_alpha`` in the section, any other field under ``args``), in alphabetical order: run names must not
    depend on the order in which a transformers version declares TrainingArguments' fields."""
    args = settings.get("args") or {}
    axes = []
    for name, f in sorted(_sau_config_fields().items()):
        value = settings.get(name) if name in ("sau_topk", "sau_alpha") else args.get(name)
        if isinstance(value, list) and (not _takes_lists(f) or all(isinstance(v, list) for v in value)):
            axes.append((name, value))
    return axes


def grid_points(settings: dict) -> list[tuple[dict, dict]]:
    """``(values, settings)`` per point of the extra axes: the axis values of the point and the unlearn settings
    with each list replaced by the point's value. One point, ``({}, settings)``, without axes."""
    import copy
    import itertools

    axes = grid_axes(settings)
    points = []
    for combo in itertools.product(*(values for _, values in axes)):
        values = dict(zip((name for name, _ in axes), combo, strict=True))
        point = copy.deepcopy(settings)
        for name, value in values.items():
            if name in ("sau_topk", "sau_alpha"):
                point[name] = value
            else:
                point["args"][name] = value
        points.append((values, point))
    return points


def _name_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9._]", "_", str(value))


def grid_name(values: dict) -> str:
    """The run-name part of a point of the extra axes: ``-<field>=<value>`` per axis (empty without axes)."""
    return "".join(f"-{name}={_name_value(value)}" for name, value in values.items())
