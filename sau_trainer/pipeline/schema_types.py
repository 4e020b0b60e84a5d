"""The recipe's typing: dataclass fields with `help` metadata (`opt`), and building a section from a mapping with
every value checked (and gently converted: int -> float, '2e-4' -> float) against its annotation.

Every problem goes to a list (`_build`, `_coerce`), so a recipe's errors are reported at once; an unknown key
or value is named with the closest valid one (`_closest`, `_not_one_of`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from typing import Any


def opt(default: Any, help: str, choices: tuple | None = None, **extra: Any):
    """A dataclass field with `help` (and optional `choices`) metadata; lists/dicts are copied per instance."""
    meta = {"help": help, **({"choices": choices} if choices else {}), **extra}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if isinstance(default, SAUDefault):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


class SAUDefault:
    """The default of a recipe key that is a SAUConfig field (``unlearn.sau_topk``): SAUConfig's own, read when a
    section is built (SAUConfig imports transformers; the command line's ``--help`` does not)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self) -> Any:
        from ..config import field_default

        return field_default(self.name)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _closest(key: str, valid: list[str], prefix: str = "", kind: str = "keys") -> str:
    """'did you mean ...?' with the closest valid key (difflib), or the list of valid keys (or values)."""
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return f"did you mean {prefix + match[0]!r}?"
    return f"valid {kind}: {', '.join(valid)}"


def _not_one_of(value: Any, valid: list[str]) -> str:
    """'X is not one of a, b, c' with the closest valid value, if one is close (each value named once)."""
    match = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.5)
    return f"{value!r} is not one of {', '.join(valid)}" + (f"; did you mean {match[0]!r}?" if match else "")


def _coerce(value: Any, tp: Any, path: str, errors: list[str], meta: dict | None = None) -> Any:
    """`value` checked (and gently converted: int -> float, '2e-4' -> float) against the annotation `tp`."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        # prefer an exact structural match before conversions (str | dict keeps the dict)
        for option in options:
            if option is not type(None) and _matches(value, option):
                return _coerce(value, option, path, errors, meta)
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, option, path, trial, meta)
            if not trial:
                return out
        errors.append(f"{path}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, list | tuple) else [value]  # a scalar is a one-item list
        out = [_coerce(v, item_tp, f"{path}[{i}]" if isinstance(value, list | tuple) else path, errors, meta)
               for i, v in enumerate(items)]
        if not out and not meta.get("may_be_empty"):
            errors.append(f"{path}: the list is empty")
        return out
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return {}
        return dict(value)
    if _is_dataclass_type(tp):
        return _build(tp, value, path, errors)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            errors.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            errors.append(f"{path}: expected a number, got {value!r}")
            return value
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        errors.append(f"{path}: expected a number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r} (quote it in YAML)")
            return value
        choices = meta.get("choices")
        if choices and value not in choices:
            errors.append(f"{path}: {_not_one_of(value, list(choices))}")
        return value
    return value  # pragma: no cover - no other annotation is used


def _matches(value: Any, tp: Any) -> bool:
    if _is_dataclass_type(tp) or tp is dict or typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if typing.get_origin(tp) is list:
        return isinstance(value, list)
    if tp is float:
        return isinstance(value, float)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(tp, type) and isinstance(value, tp)


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    """An instance of dataclass `cls` from a mapping; unknown keys and bad values go to `errors`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or 'recipe'}: expected a mapping of keys, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            errors.append(f"unknown key {where!r}; {_closest(str(key), list(fields), f'{path}.' if path else '')}")
            continue
        kwargs[key] = _coerce(value, hints[key], where, errors, dict(fields[key].metadata))
    return cls(**kwargs)
