"""The package's layout (issue 24): no import circle, no file over 450 lines, lower layers import no higher one.

The graph is read from the source by `import_graph` (one node per file; every import counts, inside functions
too; `from package import name` is an import of the file that defines `name` when the package's `__init__` only
re-exports it). What issue 25 will redo (the pipeline, and the benchmarks spread over `data/` and `evaluation/`)
is allowed below, file by file; the lists may only shrink: a file that leaves a circle or drops under the limit
must be taken off (the test says so), and a circle or a long file anywhere else fails.
"""

from __future__ import annotations

import textwrap

from import_graph import MAX_LINES, Graph, long_files

# Circles left to fix, each a set of files that may import each other in a loop (none now: issue 25 broke the
# last ones). A circle found must lie inside one of these sets (two of them merging is a new circle); each file
# listed must still be in a circle.
KNOWN_CIRCLES: dict[str, set[str]] = {}

# Files over MAX_LINES left to split (none now).
KNOWN_LONG_FILES: set[str] = set()


def _describe(graph: Graph, circles: list[list[str]]) -> str:
    return "\n".join(f"circle of {len(c)} files: {c}\n  e.g. {' -> '.join(graph.loop_in(c))}" for c in circles)


def test_no_import_circle_outside_issue_25():
    graph = Graph()
    circles = graph.circles()
    new = [c for c in circles if not any(set(c) <= known for known in KNOWN_CIRCLES.values())]
    assert not new, "import circles (files that import each other in a loop; break them, e.g. by moving the " \
                    "shared piece to a lower layer, see CONTRIBUTING.md):\n" + _describe(graph, new)
    in_circles = {f for c in circles for f in c}
    gone = sorted(f for known in KNOWN_CIRCLES.values() for f in known if f not in in_circles)
    assert not gone, f"no longer in an import circle, take them off KNOWN_CIRCLES: {gone}"


def test_no_package_file_over_the_line_limit():
    long = long_files()
    new = {path: n for path, n in long.items() if path not in KNOWN_LONG_FILES}
    assert not new, f"package files over {MAX_LINES} lines (split them along their concepts): {new}"
    gone = sorted(KNOWN_LONG_FILES - set(long))
    assert not gone, f"now at most {MAX_LINES} lines, take them off KNOWN_LONG_FILES: {gone}"


# The bottom layers and what each may import (of the package): the rule in their `__init__` docstrings.
LOWER_LAYERS = {
    "sau_trainer.core": ("sau_trainer.core",),
    "sau_trainer.parallel": ("sau_trainer.core", "sau_trainer.parallel"),
}


def test_lower_layers_import_only_lower_layers():
    """`core` (pure tensors) imports only itself; `parallel` (the backends) only `core` and itself."""
    graph = Graph()
    up = sorted(f"{graph.path(a)} -> {graph.path(b)}" for a, targets in graph.edges.items() for layer, allowed in
                LOWER_LAYERS.items() if a == layer or a.startswith(layer + ".")
                for b in targets if not any(b == ok or b.startswith(ok + ".") for ok in allowed))
    assert not up, f"imports from a lower layer to a higher one (see CONTRIBUTING.md): {up}"


# ------------------------------------------------------------------ the reader itself, on a made-up package
def _package(root, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = root / "sau_trainer" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return Graph(root)


def test_the_reader_sees_imports_inside_functions_and_through_reexports(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": '_EXPORTS = {"Thing": "things"}\n__version__ = "0"\n',
        "things.py": "def Thing():\n    from .sub import helper\n    return helper\n",
        "sub/__init__.py": "from .impl import helper\n",
        "sub/impl.py": "def helper():\n    from sau_trainer import Thing\n",
        "sub/other.py": "import sau_trainer.sub\nfrom .. import __version__\n",
    })
    assert graph.edges["sau_trainer.things"] == {"sau_trainer.sub.impl"}  # re-export followed, inside a function
    assert graph.edges["sau_trainer.sub.impl"] == {"sau_trainer.things"}  # through the lazy _EXPORTS table
    assert graph.edges["sau_trainer.sub.other"] == {"sau_trainer.sub", "sau_trainer"}  # a package: its __init__
    assert graph.circles() == [["sau_trainer/sub/impl.py", "sau_trainer/things.py"]]
    loop = graph.loop_in(graph.circles()[0])
    assert loop[0] == loop[-1] and len(loop) == 3


def test_the_reader_counts_import_module_strings_and_self_imports(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": 'from importlib import import_module\n\ndef f():\n    return import_module("sau_trainer.b")\n',
        "b.py": "from . import a\n",
        "c.py": "from sau_trainer import c\n",
    })
    assert graph.circles() == [["sau_trainer/a.py", "sau_trainer/b.py"], ["sau_trainer/c.py"]]
