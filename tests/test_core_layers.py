"""Where the layers below the pipeline may reach (issue 24), read from the source by `import_graph`.

`tests/test_import_graph.py` checks `core` and `parallel`; here: what the Trainer glue (`training`) and the
objectives may import, that none of the four imports a moved module through its old path (a re-export hides the
real arrow: `objectives/rmu.py` reached the training layer through `sau_trainer.masks`), and that every module at
the package root is either such an old path or has its place written down (CONTRIBUTING.md, "The layers").
"""

from __future__ import annotations

import ast

from import_graph import Graph

# What each layer may import of the package (itself included), the rule in its package docstring.
MAY_IMPORT = {
    "sau_trainer.objectives": ("sau_trainer.core", "sau_trainer.data", "sau_trainer.objectives"),
    "sau_trainer.training": ("sau_trainer.core", "sau_trainer.parallel", "sau_trainer.objectives", "sau_trainer.data",
                             "sau_trainer.training", "sau_trainer.config", "sau_trainer.progress",
                             "sau_trainer.redact", "sau_trainer.clitools", "sau_trainer.modeling",
                             "sau_trainer.lazy"),
}

# Modules at the package root that are not the old path of a moved module, and why each stays there.
ROOT_MODULES = {
    "sau_trainer": "the package: the public names (SPEC section 9), imported lazily",
    "sau_trainer.__main__": "python -m sau_trainer",
    "sau_trainer.cli": "the command line, the top of every layer",
    "sau_trainer.hub": "the `push` subcommand and the model card: top layer, beside cli (imports pipeline)",
    "sau_trainer.plugins": "the extension contract: writes into the registries of objectives, pruning, benchmarks",
    "sau_trainer.config": "SAUConfig, the public configuration (like trl's configs): read by every layer above "
                          "core and parallel; validates against the registries",
    "sau_trainer.robustness": "the robustness attacks (quantize, prune, relearn): evaluation, placed by issue 25",
    "sau_trainer.modeling": "leaf helper: build and load causal LMs (no package import)",
    "sau_trainer.progress": "leaf helper: progress bars and log lines",
    "sau_trainer.redact": "leaf helper: what never leaves the machine",
    "sau_trainer.clitools": "leaf helper: what the subcommands share",
    "sau_trainer.lazy": "leaf helper: the packages' lazy exports",
}


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _old_paths(graph: Graph) -> set[str]:
    """Modules left at the path of a moved one: their docstring begins with "Moved" and they only re-export."""
    return {m for m in graph.files if (ast.get_docstring(graph.trees[m]) or "").startswith("Moved")}


def test_training_and_objectives_import_only_the_layers_below():
    graph = Graph()
    up = sorted(f"{graph.path(a)} -> {graph.path(b)}" for layer, allowed in MAY_IMPORT.items()
                for a, targets in graph.edges.items() if _in(a, (layer,))
                for b in targets if not _in(b, allowed))
    assert not up, f"imports from a layer to one above it (see CONTRIBUTING.md, 'The layers'): {up}"


def test_the_lower_layers_import_no_old_path():
    graph = Graph()
    old = _old_paths(graph)
    layers = ("sau_trainer.core", "sau_trainer.parallel", "sau_trainer.training", "sau_trainer.objectives")
    through = sorted(f"{graph.path(a)} -> {graph.path(b)}" for a, targets in graph.edges.items()
                     if _in(a, layers) and a not in old for b in targets & old)
    assert not through, f"import from the new home, not through a moved module's old path: {through}"


def test_every_root_module_is_an_old_path_or_has_its_place():
    graph = Graph()
    root = {m for m in graph.files if m.count(".") <= 1 and graph.files[m].parent.name == "sau_trainer"}
    unplaced = sorted(root - _old_paths(graph) - set(ROOT_MODULES))
    assert not unplaced, (f"modules at the package root without a layer: {unplaced}; move them into the layer "
                          "they belong to (CONTRIBUTING.md), or say here and there why they stay")
    gone = sorted(set(ROOT_MODULES) - root)
    assert not gone, f"no longer at the root, take them off ROOT_MODULES: {gone}"
