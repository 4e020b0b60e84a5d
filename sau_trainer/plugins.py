"""The extension contract: register an objective, a pruner or a benchmark from outside the package, and load a
recipe's ``plugins:``.

``register_objective``, ``register_pruner`` and ``register_benchmark`` add to the one registry of each kind
(`sau_trainer.objectives.OBJECTIVES`, `sau_trainer.pruning.registry.PRUNERS`,
`sau_trainer.benchmarks.registry.BENCHMARKS`); each is usable as a class decorator and refuses a name that is taken.
Everything that reads names (the recipe schema, the planner, the memory estimate, the report, the command line)
reads those registries, so a registered entry is usable everywhere.

A recipe's ``plugins:`` lists files (``.py``, relative to the recipe file) or module names; `load_plugins` imports
them before the recipe is validated, in every process that reads the recipe (each process of ``accelerate
launch`` reads it itself). `plugin_fingerprints` is what enters the hash of the tasks that may use a plugin
(pruning, unlearning, attacks): a changed plugin file recomputes them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

_PREFIX = "sau_trainer_plugin_"


def _same(a: Any, b: Any) -> bool:
    """The same definition: one object, a class (or an instance of one) from the same module imported again, or
    an equal instance of the same class (a decorator applied twice)."""
    ta, tb = (a if isinstance(a, type) else type(a)), (b if isinstance(b, type) else type(b))
    if a is b:
        return True
    if (ta.__module__, ta.__qualname__) != (tb.__module__, tb.__qualname__):
        return False
    return isinstance(a, type) or ta is not tb or vars(a) == vars(b)


def _add(registry: Any, kind: str, name: Any, entry: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} needs a non-empty string `name` to be registered, got {name!r}")
    if name in registry and not _same(registry[name], entry):
        raise ValueError(f"a {kind} named {name!r} is already registered ({_describe(registry[name])}); "
                         f"give {_describe(entry)} another name")
    registry[name] = entry


def _describe(entry: Any) -> str:
    cls = entry if isinstance(entry, type) else type(entry)
    return f"{cls.__module__}.{cls.__qualname__}"


def register_objective(cls: type) -> type:
    """Add an `Objective` subclass to `OBJECTIVES` under its ``name``; returns the class (a class decorator).
    Its ``params`` (a dataclass, optional) are set from ``SAUConfig(objective_args={name: {...}})`` or a recipe's
    ``unlearn.objective_args.<name>`` and reach it as ``self.params``."""
    from .objectives import OBJECTIVES, Objective

    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register_objective takes a subclass of sau_trainer.objectives.Objective, got {cls!r}")
    params = getattr(cls, "params", None)
    if params is not None and not (isinstance(params, type) and hasattr(params, "__dataclass_fields__")):
        raise TypeError(f"{cls.__qualname__}.params must be a dataclass (fields with `help` metadata), got {params!r}")
    _add(OBJECTIVES, "objective", getattr(cls, "name", None), cls)
    return cls


def register_pruner(cls: Any) -> Any:
    """Add a pruner to `PRUNERS` under its ``name``: a class (instantiated without arguments; returned, so this
    is a class decorator) or an instance. A pruner has ``name``, ``statistic`` (None, "act_norm_sq" or "hessian")
    and ``prune(weight, stat, sparsity, structure, **options) -> (new_weight, keep_mask, extra_report)``."""
    from .pruning.registry import PRUNERS

    pruner = cls() if isinstance(cls, type) else cls
    if not callable(getattr(pruner, "prune", None)) or not hasattr(pruner, "statistic"):
        raise TypeError(f"a pruner needs `statistic` and a `prune` method; {_describe(pruner)} lacks one")
    _add(PRUNERS, "pruner", getattr(pruner, "name", None), pruner)
    return cls


def register_benchmark(cls: Any) -> Any:
    """Add a `sau_trainer.benchmarks.base.Benchmark` to `BENCHMARKS` under its ``name``: a subclass
    (instantiated without arguments; returned, so this is a class decorator) or an instance."""
    from .benchmarks.base import Benchmark
    from .benchmarks.registry import BENCHMARKS

    bench = cls() if isinstance(cls, type) else cls
    if not isinstance(bench, Benchmark):
        raise TypeError(f"register_benchmark takes a sau_trainer.benchmarks.base.Benchmark, got {bench!r}")
    _add(BENCHMARKS, "benchmark", bench.name, bench)
    return cls


# ------------------------------------------------------------------------------------------------ plugins
def is_path(entry: str) -> bool:
    """A plugin given as a file (``my_plugin.py``, ``plugins/x.py``) rather than a module name."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def resolve_paths(data: Any, base: Path) -> Any:
    """A raw recipe mapping with its ``plugins:`` files made absolute against the recipe's folder `base`."""
    if isinstance(data, dict) and isinstance(data.get("plugins"), list):
        data = dict(data)
        data["plugins"] = [str((base / e).resolve()) if isinstance(e, str) and is_path(e) else e
                           for e in data["plugins"]]
    return data


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"{_PREFIX}{path.stem}_{digest}"


def load_plugin(entry: str) -> None:
    """Import one plugin (a ``.py`` file or a module name) once per process; its decorators register."""
    if not is_path(entry):
        importlib.import_module(entry)
        return
    path = Path(entry).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no plugin file at {path}")
    name = _module_name(path)
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise


def load_plugins(entries: Any) -> list[str]:
    """Import a recipe's ``plugins:``; the problems, one line each (empty when every plugin loaded)."""
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        return [f"plugins: a list of plugin files (.py, relative to the recipe) or module names, got {entries!r}"]
    problems = []
    for i, entry in enumerate(entries):
        try:
            load_plugin(entry)
        except Exception as err:  # noqa: BLE001 - any failure of user code is one line naming the plugin
            problems.append(f"plugins[{i}]: cannot load {entry!r}: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}")
    return problems


def plugin_fingerprints(entries: list[str]) -> list[dict]:
    """What identifies each plugin in a task hash: a file's name and content digest; a module's name, version
    and source digest (not the absolute path, so a moved output directory stays valid)."""
    out = []
    for entry in entries:
        if is_path(entry):
            path = Path(entry)
            out.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]})
            continue
        module = importlib.import_module(entry)
        fp: dict = {"module": entry, "version": str(getattr(module, "__version__", ""))}
        source = getattr(module, "__file__", None)
        if source and Path(source).is_file():
            fp["sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
        out.append(fp)
    return out
