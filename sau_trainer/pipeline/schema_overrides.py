"""``key.path=value`` overrides of a recipe (the command line's), applied to the raw mapping before validation."""

from __future__ import annotations

from typing import Any

import yaml

from .recipe_io import RecipeError, yaml_load


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a", "b", "c"], VALUE parsed as YAML: 2e-4, true, [1, 2], null, text)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. unlearn.learning_rate=2e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {text!r}: bad key {key!r}")
    try:
        value = yaml_load(raw, f"override {key.strip()!r}") if raw.strip() else ""
    except yaml.YAMLError as err:
        raise RecipeError(f"override {key.strip()!r}: the value is not valid YAML ({' '.join(str(err).split())}); "
                          "e.g. unlearn.learning_rate=[1e-4,2e-4]") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of the raw recipe mapping with each ``key.path=value`` set (validation comes after)."""
    import copy

    out = copy.deepcopy(data) if data else {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out
