"""What the planning steps share (`Planner`): the recipe, the data fingerprint, the tasks planned so far, the models
the stages start from, the recipe's prunings; and the names of models and runs.

Every task's settings are built here or in the step that plans it (`plan.py`, `attacks.py`), and they are what the
runner hashes: a key added or renamed recomputes every cached task of that kind, so new keys are added only when
their setting is used (as ``offload``, ``plugins`` and ``trajectory`` are).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .schema import Recipe, TrainSection, grid_name
from .tasks import Task, data_fingerprint, file_digest, model_fingerprint

PLUGIN_KINDS = ("prune", "unlearn", "attack")  # the task kinds a plugin's objective, pruner or attack may change


def prune_id(method: str, sparsity: float, structure: str) -> str:
    """``magnitude-50`` (unstructured 50%) or ``wanda-2of4`` (2:4)."""
    if structure != "unstructured":
        return f"{method}-{structure.replace(':', 'of')}"
    return f"{method}-{round(sparsity * 100):g}"


def target_sparsity(sparsity: float | None, structure: str) -> float:
    """The sparsity a pruning reaches: `sparsity`, or N:M's share of zeros."""
    from ..pruning.nm import parse_structure, resolve_sparsity

    return float(resolve_sparsity(sparsity, parse_structure(structure)))


def run_name(start: str, objective: str, sau: bool, lr: float, seed: int, grid: dict | None = None) -> str:
    """``<start>-<objective>-<plain|sau>[-<field>=<value>...]-lr<lr>-s<seed>`` (`grid`: the extra axes' values)."""
    return f"{start}-{objective}-{'sau' if sau else 'plain'}{grid_name(grid or {})}-lr{lr:g}-s{seed}"


def train_settings(sec: TrainSection, splits: list[str]) -> dict:
    """A train task's own settings: its section and the splits it trains on."""
    return {"train": asdict(sec), "splits": splits}


@dataclass(frozen=True)
class Pruning:
    """One pruning of the recipe (``prune.method`` x ``prune.sparsity``, or one N:M structure)."""

    pid: str  # the output name's part: ``wanda-50``, ``wanda-2of4``
    method: str
    sparsity: float | None  # None for N:M structures
    target_sparsity: float
    label: str  # what the report shows: the method, with the N:M structure


@dataclass
class Planner:
    """The state the planning steps share, in place of closures over `plan`'s locals."""

    recipe: Recipe
    fp: dict  # the data fingerprint (`tasks.data_fingerprint`)
    model_spec: dict
    tasks: list[Task] = field(default_factory=list)
    by_name: dict[str, Task] = field(default_factory=dict)
    refs: dict[str, str | None] = field(default_factory=dict)  # target / retain -> "task:NAME" or a model reference
    prunings: list[Pruning] = field(default_factory=list)

    @classmethod
    def start(cls, recipe: Recipe, load: Callable[[], dict] | None = None) -> Planner:
        """The planner of `recipe`, with the tokenizer task when the model is built from scratch."""
        m = recipe.model
        pl = cls(recipe, data_fingerprint(recipe, load), asdict(m))
        if m.shape is not None:
            pl.add(Task("tokenizer", "tokenizer", {"data": pl.fp, "vocab_size": m.vocab_size}))
            pl.model_spec["init_code"] = file_digest(__import__("sau_trainer.modeling", fromlist=["x"]).__file__)
        else:
            pl.model_spec["source"] = model_fingerprint(m.name_or_path)
        return pl

    # ------------------------------------------------------------------ tasks
    def add(self, task: Task) -> Task:
        """Plan `task` (with the recipe's plugins in its settings where a plugin may change its output)."""
        if self.recipe.plugins and task.kind in PLUGIN_KINDS:  # only then: existing hashes unchanged
            from ..plugins import plugin_fingerprints

            task.settings["plugins"] = plugin_fingerprints(self.recipe.plugins)  # a changed plugin recomputes
        self.tasks.append(task)
        self.by_name[task.name] = task
        return task

    @property
    def tok_deps(self) -> dict[str, str]:
        """The tokenizer task, which every model-loading task reads when the model is built from scratch."""
        return {"tokenizer": "tokenizer"} if self.recipe.model.shape is not None else {}

    @staticmethod
    def deps_of(ref: str | None, role: str = "model") -> dict[str, str]:
        """A dependency on the task `ref` names (``task:NAME``); none for an external model."""
        return {role: ref[5:]} if ref and ref.startswith("task:") else {}

    # ------------------------------------------------------------------ settings
    @property
    def loading(self) -> dict:
        """How models are loaded (dtype, attention, tokenizer): every stage that loads one depends on it."""
        return {k: self.model_spec.get(k) for k in ("dtype", "attn_implementation", "tokenizer")}

    def src_settings(self, ref: str) -> dict:
        """The source of a task (a task reference, hashed through its dependency, or an external model with its
        fingerprint) and how it is loaded."""
        src = {"source": ref} if ref.startswith("task:") else {"source": ref, "fingerprint": model_fingerprint(ref)}
        return {**src, "loading": self.loading}

    def prune_settings(self, method: str, sparsity: float | None, ref: str, structure: str | None = None) -> dict:
        """A prune task's settings: `method` at `sparsity` (and `structure`, default the recipe's) on `ref`, with
        the recipe's calibration settings."""
        p = self.recipe.prune
        return {**self.src_settings(ref), "method": method,
                "sparsity": sparsity, "structure": p.structure if structure is None else structure,
                "calibration_split": p.calibration_split, "calibration_path": p.calibration_path,
                "num_samples": p.num_samples, "seq_len": p.seq_len, "batch_size": p.batch_size,
                "dtype": self.recipe.model.dtype, "data": self.fp,
                **({"offload": True} if p.offload else {})}  # only when set: existing caches stay valid


__all__ = ["PLUGIN_KINDS", "Planner", "Pruning", "prune_id", "run_name", "target_sparsity", "train_settings"]
