"""Reading recipe YAML: 1.2-style numbers, and a bound on the size a document expands to.

YAML anchors and aliases let a few hundred bytes describe billions of nodes (the "billion laughs" pattern:
``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ... nine levels). PyYAML shares the aliased objects, so the
load itself is quick, but whatever walks the result (an error message's ``repr``, ``dataclasses.asdict``, a
merge key ``<<:`` at construction) expands it and runs for hours. `RecipeLoader` counts the nodes of each
composed document as if every alias were written out, before any Python object is built, and refuses a
document beyond `MAX_RECIPE_NODES` (a real recipe has a few hundred); `check_size` applies the same bound to
a mapping given directly to `validate`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import yaml

# A recipe with every section written out and a grid of a thousand values has under 5,000 nodes.
MAX_RECIPE_NODES = 100_000


class RecipeError(ValueError):
    """A recipe (or an override) that does not validate; the message lists every problem."""


class RecipeLoader(yaml.SafeLoader):
    """YAML with 1.2-style numbers (``1e-5`` is a float, ``2:4`` a string, not base-60), and at most
    `MAX_RECIPE_NODES` nodes once aliases are expanded."""

    def compose_document(self):
        node = super().compose_document()
        check_size(node, _node_children, "the YAML document")
        return node


RecipeLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
    list("-+0123456789"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _node_children(node: Any) -> Iterable:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return ()


def _data_children(value: Any) -> Iterable:
    if isinstance(value, dict):
        return [part for pair in value.items() for part in pair]
    if isinstance(value, list | tuple):
        return value
    return ()


def check_size(root: Any, children: Callable[[Any], Iterable] = _data_children, what: str = "the recipe",
               limit: int = MAX_RECIPE_NODES) -> int:
    """The number of nodes of `root` with every shared part counted each time it is reached; `RecipeError`
    beyond `limit`, or for a structure that contains itself. Linear in the distinct nodes (sizes memoised),
    iterative (no recursion limit)."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            size = 1 + sum(sizes[id(c)] for c in children(node))
            if size > limit:
                raise RecipeError(
                    f"{what} expands beyond {limit:,} nodes (YAML aliases repeat what they refer to); a recipe is "
                    "a few hundred: write the values out, or give fewer of them")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in open_:
            raise RecipeError(f"{what} contains itself (a YAML alias inside the node it refers to); write the "
                              "values out")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))
    return sizes[id(root)]


def yaml_load(text: str, what: str = "the recipe") -> Any:
    """Parse YAML with `RecipeLoader` (1e-5 is a float, 2:4 a string); `RecipeError` for a document that
    expands beyond `MAX_RECIPE_NODES` or nests too deeply."""
    try:
        return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise RecipeError(f"{what} is nested too deeply to read; a recipe is a few levels of sections") from None
    except RecipeError as err:
        raise RecipeError(str(err).replace("the YAML document", what)) from None
