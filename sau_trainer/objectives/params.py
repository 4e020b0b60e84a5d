"""An objective's own settings: a dataclass named by the objective class's ``params``.

``SAUConfig(objective_args={"scaled_ga": {"scale": 0.5}})`` (a recipe: ``unlearn.objective_args.scaled_ga``)
sets them; `SAUConfig` checks them once through `check_objective_args` (an unknown field or a value the
dataclass's ``__post_init__`` refuses is a one-line error naming the field), and the objective reads them as
``self.params``. The built-in objectives still read their flat `SAUConfig` fields (``npo_beta``, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any


def param_fields(cls: type) -> list[str]:
    """The settings an objective class declares (its ``params`` dataclass's fields; none without one)."""
    params = getattr(cls, "params", None)
    return [f.name for f in dataclasses.fields(params)] if isinstance(params, type) and \
        dataclasses.is_dataclass(params) else []


def build_params(cls: type, given: Any) -> Any:
    """The ``params`` instance of objective class `cls` from the mapping `given`; ValueError naming the field."""
    params = getattr(cls, "params", None)
    where = f"objective_args.{cls.name}"
    if not isinstance(params, type):
        if given:
            raise ValueError(f"{where}: the objective {cls.name!r} declares no params; got {sorted(given)}")
        return None
    if not isinstance(given, dict):
        raise ValueError(f"{where}: expected a mapping of {cls.name}'s params, got {given!r}")
    names = param_fields(cls)
    for key in given:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"valid: {', '.join(names) or 'none'}"
            raise ValueError(f"{where}.{key}: {cls.name} has no param {key!r}; {hint}")
    try:
        return params(**given)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        named = [k for k in given if k in message] or list(given)
        raise ValueError(f"{where}.{named[0]}: {message}") from None


def check_objective_args(objective_args: Any, objectives: dict) -> None:
    """Every entry of `objective_args` names a registered objective and builds its params (ValueError if not)."""
    if not isinstance(objective_args, dict):
        raise ValueError(f"objective_args must be a mapping {{objective: {{param: value}}}}, got {objective_args!r}")
    for name, given in objective_args.items():
        if name not in objectives:
            raise ValueError(f"objective_args.{name}: not a registered objective; choose one of {sorted(objectives)}")
        build_params(objectives[name], given)
