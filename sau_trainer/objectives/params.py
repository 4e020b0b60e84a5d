"""An objective's own settings: a dataclass named by the objective class's ``params``.

``SAUConfig(objective_args={"npo": {"beta": 0.2}})`` (a recipe: ``unlearn.objective_args: {npo: {beta: 0.2}}``)
sets them; `SAUConfig` checks them once through `check_objective_args` (an unknown field, a value outside the
field's ``choices``, a float that is NaN or infinite, or a value the dataclass's ``__post_init__`` refuses is a
one-line error naming the field), and the objective reads them as ``self.params``.

A field declared with ``param(..., flat="npo_beta")`` also has a flat `SAUConfig` name, the one the settings had
before objectives owned them: ``SAUConfig(npo_beta=0.2)`` sets it, ``config.npo_beta`` reads it, recipes keep
``unlearn.npo_beta``, and the pipeline's task hashes spell it that way (an existing output directory stays
valid). One flat name may set the same field of several objectives (``idk_pairing``: IdkDPO, IdkNLL, AltPO).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Any


def param(default: Any, help: str, *, flat: str | None = None, choices: tuple | None = None) -> Any:
    """A params field with `help` metadata, its flat `SAUConfig` name (if it has one) and allowed values."""
    meta = {"help": help, **({"flat": flat} if flat else {}), **({"choices": choices} if choices else {})}
    return dataclasses.field(default=default, metadata=meta)


def _params_class(cls: type) -> type | None:
    params = getattr(cls, "params", None)
    return params if isinstance(params, type) and dataclasses.is_dataclass(params) else None


def param_fields(cls: type) -> list[str]:
    """The settings an objective class declares (its ``params`` dataclass's fields; none without one)."""
    params = _params_class(cls)
    return [f.name for f in dataclasses.fields(params)] if params else []


def flat_names(objectives: dict) -> dict[str, list[tuple[str, str]]]:
    """flat `SAUConfig` name -> [(objective, field)] it sets, over the registered objectives (registry order)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, cls in objectives.items():
        for f in dataclasses.fields(_params_class(cls)) if _params_class(cls) else ():
            if f.metadata.get("flat"):
                out.setdefault(f.metadata["flat"], []).append((name, f.name))
    return out


def flat_field(objectives: dict, flat: str) -> dataclasses.Field:
    """The params field behind a flat name (its default, type and help)."""
    obj, name = flat_names(objectives)[flat][0]
    return {f.name: f for f in dataclasses.fields(_params_class(objectives[obj]))}[name]


def float_fields(cls: type) -> dict[str, bool]:
    """name -> whether None is allowed, for every field of dataclass `cls` declared ``float`` or ``float | None``."""
    out = {}
    for f in dataclasses.fields(cls):
        words = set(re.findall(r"\w+", f.type if isinstance(f.type, str) else repr(f.type)))
        if "float" in words and words <= {"float", "None", "Optional", "class", "typing"}:
            out[f.name] = "None" in words or "Optional" in words
    return out


def _closest(value: Any, valid: list) -> str:
    match = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


def build_params(cls: type, given: Any, spelled: dict[str, str] | None = None) -> Any:
    """The ``params`` instance of objective class `cls` from the mapping `given`; ValueError naming the field as
    the user spelled it (`spelled`: field -> flat name; default ``objective_args.<objective>.<field>``)."""
    params = _params_class(cls)
    where = f"objective_args.{cls.name}"
    if params is None:
        if given:
            raise ValueError(f"{where}: the objective {cls.name!r} declares no params; got {sorted(given)}")
        return None
    if not isinstance(given, dict):
        raise ValueError(f"{where}: expected a mapping of {cls.name}'s params, got {given!r}")
    spelled = spelled or {}
    fields = {f.name: f for f in dataclasses.fields(params)}
    floats = float_fields(params)
    for key, value in given.items():
        name = spelled.get(key, f"{where}.{key}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {where}.{close[0]}?" if close else f"valid: {', '.join(fields) or 'none'}"
            raise ValueError(f"{where}.{key}: {cls.name} has no param {key!r}; {hint}")
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(choices)}{_closest(value, choices)}")
        if key in floats and not (value is None and floats[key]):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                what = "a finite number" + (" or None" if floats[key] else "")
                raise ValueError(f"{name}={value!r} must be {what} (default: {fields[key].default!r}).")
    try:
        return params(**given)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(_as_spelled(message, cls, given, spelled)) from None


def _as_spelled(message: str, cls: type, given: dict, spelled: dict[str, str]) -> str:
    """The params' message with each ``field=`` named as the user spelled it: ``beta=0 must be > 0`` ->
    ``npo_beta=0 must be > 0`` (given flat) or ``objective_args.npo.beta=0 must be > 0``."""
    where = f"objective_args.{cls.name}"
    flat = {f.name: f.metadata.get("flat") for f in dataclasses.fields(_params_class(cls))}
    by_flat = bool(spelled) and all(k in spelled for k in given)  # everything given flat: name the rest flat too

    def name(key: str) -> str:
        return spelled.get(key) or (flat.get(key) if by_flat and flat.get(key) else f"{where}.{key}")

    out = re.sub(r"\b(\w+)=", lambda m: f"{name(m[1])}=" if m[1] in flat else m[0], message)
    if out != message and any(out.startswith(f"{name(k)}=") for k in flat):
        return out
    named = [k for k in given if k in message] or list(given)
    return f"{name(named[0])}: {message}"


def merge_flat(objective_args: Any, flat: dict[str, Any], objectives: dict) -> tuple[dict, dict]:
    """`objective_args` with each flat setting (``npo_beta=0.2``) set in every objective it belongs to, and
    ``{objective: {field: flat name}}`` for messages. A flat setting and the same field given under
    `objective_args` with another value is a ValueError naming both (one setting, two values)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (objective_args or {}).items()}
    spelled: dict[str, dict[str, str]] = {}
    names = flat_names(objectives)
    for key, value in flat.items():
        for obj, field_name in names[key]:
            entry = out.get(obj, {})
            if not isinstance(entry, dict):
                continue  # reported by check_objective_args
            if field_name in entry and entry[field_name] != value:
                raise ValueError(f"{key}={value!r} and objective_args[{obj!r}][{field_name!r}]={entry[field_name]!r} "
                                 "are the same setting with two values; give one of them")
            default = flat_field(objectives, key).default
            if field_name not in entry and (value is default or (type(value) is type(default) and value == default)):
                continue  # the default: objective_args stays as given (dataclasses.replace passes every flat name)
            out[obj] = {**entry, field_name: value}
            spelled.setdefault(obj, {})[field_name] = key
    return out, spelled


def check_objective_args(objective_args: Any, objectives: dict, spelled: dict | None = None) -> dict:
    """Every entry of `objective_args` names a registered objective and builds its params (ValueError if not);
    the params instances by objective."""
    if not isinstance(objective_args, dict):
        raise ValueError(f"objective_args must be a mapping {{objective: {{param: value}}}}, got {objective_args!r}")
    built = {}
    for name, given in objective_args.items():
        if name not in objectives:
            close = _closest(name, sorted(objectives))
            raise ValueError(f"objective_args.{name}: not a registered objective; choose one of "
                             f"{sorted(objectives)}{close}")
        built[name] = build_params(objectives[name], given, (spelled or {}).get(name))
    return built
