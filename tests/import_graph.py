"""The package's import graph, read from the source with `ast` (nothing is imported), and its circles.

One node per file of `sau_trainer`. Every import is an arrow, wherever it stands (module level, inside a
function, under `if TYPE_CHECKING:`), relative or absolute:
- `import sau_trainer.a.b` / `from sau_trainer.a import b` (b a module) -> the file of `a.b`;
- importing a package -> its `__init__.py`;
- `from package import name` -> the file that defines `name` when the package's `__init__.py` only re-exports
  it (`from .x import name` there, followed through further re-exports; a lazy `_EXPORTS = {name: module}`
  table read by a module `__getattr__` is a re-export too), else the `__init__.py` itself;
- in a file that calls `import_module`/`__import__`, every string literal naming a module of the package
  ("sau_trainer.x.y") is an arrow to it; an `__init__.py`'s `_EXPORTS` table is its own arrows to the modules
  it names (they are imported on first use).

A circle is a set of files that import each other in a loop: a strongly connected component of two or more
files (or a file importing itself). Run `python tests/import_graph.py` to print the circles and the files
over the line limit.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sau_trainer"
MAX_LINES = 450


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package's name -> its __init__.py)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _absolute(module: str | None, level: int, current: str, current_is_package: bool) -> str:
    """The absolute dotted name of a (possibly relative) `from` target written in module `current`."""
    if level == 0:
        return module or ""
    base = current.split(".")
    if not current_is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class Graph:
    """Files of the package and the arrows between them (see the module docstring for what is an arrow)."""

    def __init__(self, root: Path = ROOT, package: str = PACKAGE):
        self.root, self.package = root, package
        self.files = module_files(root, package)
        self.trees = {name: ast.parse(path.read_text(), str(path)) for name, path in self.files.items()}
        self._reexports = {name: self._read_reexports(name) for name, path in self.files.items() if _is_package(path)}
        self.edges: dict[str, set[str]] = {name: set() for name in self.files}
        for name in self.files:
            self._read_imports(name)

    # -------------------------------------------------------------- re-exports
    def _read_reexports(self, pkg: str) -> dict[str, str]:
        """name -> absolute module it is imported from, for the names a package's __init__ re-exports."""
        out: dict[str, str] = {}
        defined: set[str] = set()
        for node in self.trees[pkg].body:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node.module, node.level, pkg, True)
                for alias in node.names:
                    out[alias.asname or alias.name] = f"{source}.{alias.name}" if self._is_module(
                        f"{source}.{alias.name}") else source
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if "_EXPORTS" in names and isinstance(node.value, ast.Dict):
                    for key, value in zip(node.value.keys, node.value.values, strict=True):
                        if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                            out[key.value] = f"{pkg}.{value.value}"
                defined.update(names)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
        for name in defined - {"_EXPORTS"}:  # a name the __init__ defines itself is the __init__'s
            out.pop(name, None)
        return out

    def _is_module(self, name: str) -> bool:
        return name in self.files

    def resolve(self, module: str, name: str | None = None, _seen: frozenset = frozenset()) -> str | None:
        """The file (dotted module name) an import of `module` (or of `name` from it) reaches; None if outside."""
        if name is not None and self._is_module(f"{module}.{name}"):
            return f"{module}.{name}"
        if not self._is_module(module):
            return None
        if name is None or not _is_package(self.files[module]):
            return module
        source = self._reexports[module].get(name)
        if source is None or (module, name) in _seen:
            return module
        if self._is_module(source) and source.rsplit(".", 1)[-1] == name and source != module:
            return source  # `from .x import x`-style: the submodule itself
        return self.resolve(source, name, _seen | {(module, name)}) or module

    # -------------------------------------------------------------- imports
    def _add(self, current: str, target: str | None) -> None:
        if target is not None:
            self.edges[current].add(target)

    def _read_imports(self, current: str) -> None:
        is_pkg = _is_package(self.files[current])
        tree = self.trees[current]
        dynamic = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._add(current, self.resolve(alias.name))
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node.module, node.level, current, is_pkg)
                for alias in node.names:
                    if alias.name == "*":
                        self._add(current, self.resolve(source))
                    else:
                        self._add(current, self.resolve(source, alias.name))
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                dynamic = dynamic or called in ("import_module", "__import__")
        if dynamic:
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and self._is_module(node.value):
                    self._add(current, node.value)
            if is_pkg:
                for source in self._reexports[current].values():
                    if self._is_module(source):
                        self._add(current, source)

    # -------------------------------------------------------------- circles
    def path(self, module: str) -> str:
        return self.files[module].relative_to(self.root).as_posix()

    def circles(self) -> list[list[str]]:
        """The strongly connected components with a loop, each as a sorted list of file paths."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = [0]

        def visit(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
            work = [(start, iter(sorted(self.edges[start])))]
            index[start] = low[start] = counter[0]
            counter[0] += 1
            stack.append(start)
            on_stack.add(start)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = counter[0]
                        counter[0] += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(sorted(self.edges[child]))))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in self.edges[node]:
                        found.append(sorted(self.path(m) for m in component))

        for module in sorted(self.files):
            if module not in index:
                visit(module)
        return sorted(found)

    def loop_in(self, component: list[str]) -> list[str]:
        """One loop through the first file of a circle, as file paths (first file repeated at the end)."""
        by_path = {self.path(m): m for m in self.files}
        members = {by_path[p] for p in component}
        start = by_path[component[0]]
        parents: dict[str, str] = {}
        frontier = [start]
        while frontier:  # breadth first inside the component: the shortest way back to start
            nxt = []
            for node in frontier:
                for child in sorted(self.edges[node] & members):
                    if child == start:
                        loop = [node]
                        while loop[-1] != start:
                            loop.append(parents[loop[-1]])
                        return [self.path(m) for m in [start, *reversed(loop[:-1]), start]] if node != start \
                            else [self.path(start), self.path(start)]
                    if child not in parents:
                        parents[child] = node
                        nxt.append(child)
            frontier = nxt
        return component


def long_files(root: Path = ROOT, package: str = PACKAGE, limit: int = MAX_LINES) -> dict[str, int]:
    """Package files over `limit` lines: path -> line count."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            out[path.relative_to(root).as_posix()] = lines
    return out


def main() -> int:
    graph = Graph()
    circles = graph.circles()
    for component in circles:
        print(f"circle of {len(component)} files: {component}")
        print(f"  e.g. {' -> '.join(graph.loop_in(component))}")
    for path, lines in long_files().items():
        print(f"{path}: {lines} lines (over {MAX_LINES})")
    return 1 if circles or long_files() else 0


if __name__ == "__main__":
    sys.exit(main())
