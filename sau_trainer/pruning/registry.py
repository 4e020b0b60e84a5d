"""The pruner registry: adding a method is one new file and one line here."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from importlib import import_module
from typing import Any

#: method name -> (module, class) of the built-in pruners; a module (and torch) is imported on the first lookup
#: of its name, so listing the names (``sau-trainer prune --help``) imports nothing.
BUILTIN_PRUNERS: dict[str, tuple[str, str]] = {
    "magnitude": ("sau_trainer.pruning.magnitude", "MagnitudePruner"),
    "wanda": ("sau_trainer.pruning.wanda", "WandaPruner"),
    "sparsegpt": ("sau_trainer.pruning.sparsegpt", "SparseGPTPruner"),
}


class PrunerRegistry(MutableMapping):
    """method name -> pruner, a dict whose built-in entries are built on first lookup.

    A pruner has ``name``, ``statistic`` (None, "act_norm_sq" or "hessian": what the calibration pass must
    accumulate for each linear) and
    ``prune(weight, stat, sparsity, structure, **options) -> (new_weight, keep_mask, extra_report)``.
    Assigning a name registers (or replaces) a pruner object, as in a dict."""

    def __init__(self, builtin: dict[str, tuple[str, str]]):
        self._where = dict(builtin)
        self._pruners: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._pruners:
            module, cls = self._where[name]  # KeyError for an unknown name, as a dict
            self._pruners[name] = getattr(import_module(module), cls)()
        return self._pruners[name]

    def __setitem__(self, name: str, pruner: Any) -> None:
        self._where.pop(name, None)
        self._pruners[name] = pruner

    def __delitem__(self, name: str) -> None:
        if name not in self._where and name not in self._pruners:
            raise KeyError(name)
        self._where.pop(name, None)
        self._pruners.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._where, *self._pruners]))

    def __len__(self) -> int:
        return len(set(self._where) | set(self._pruners))

    def __repr__(self) -> str:
        return f"PrunerRegistry({sorted(self)})"


PRUNERS = PrunerRegistry(BUILTIN_PRUNERS)
