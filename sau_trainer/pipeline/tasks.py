"""Tasks and what every stage reads: a task is one unit of cached work (a stage kind, a name, the settings its
output depends on, the tasks it reads from); the `Context` gives a stage the recipe, the output directory, the
benchmark's data and the shared tokenizer. The fingerprints of data and models that enter task hashes live here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import Recipe, RecipeError


@dataclass
class Task:
    """One cached unit of work. `meta` describes the task for the report and is not hashed."""

    kind: str
    name: str
    settings: dict
    deps: dict[str, str] = field(default_factory=dict)  # role -> task name
    meta: dict = field(default_factory=dict)
    hash: str = ""

    def dep(self, role: str) -> str:
        return self.deps[role]


@dataclass
class Context:
    """What every stage can read: the recipe, the output directory, the data, the process state."""

    recipe: Recipe
    output_dir: Path
    tasks: dict[str, Task]
    state: Any = None  # accelerate.PartialState
    _benchmark: dict | None = None
    _tokenizer: Any = None

    def task_dir(self, name: str) -> Path:
        return self.output_dir / "stages" / name

    @property
    def is_main(self) -> bool:
        return self.state is None or self.state.is_main_process

    @property
    def num_processes(self) -> int:
        return 1 if self.state is None else self.state.num_processes

    @property
    def device(self):
        import torch

        return torch.device("cpu") if self.state is None else self.state.device

    @property
    def benchmark(self) -> dict[str, list[dict]]:
        if self._benchmark is None:
            self._benchmark = load_data(self.recipe)
        return self._benchmark

    @property
    def bench(self):
        """The recipe's entry of the benchmark registry (`sau_trainer.benchmarks.BENCHMARKS`)."""
        from ..benchmarks.registry import get_benchmark

        return get_benchmark(self.recipe.data.benchmark)

    def rows(self, splits: list[str]) -> list[dict]:
        """Training rows of `splits` (question/answer or text rows, as the benchmark defines them)."""
        return self.bench.training_rows(self.benchmark, splits)

    def split(self, name: str) -> list[dict]:
        if name not in self.benchmark:
            raise KeyError(f"The benchmark has no split {name!r}; it has {sorted(self.benchmark)}.")
        return self.benchmark[name]

    def model_source(self, ref: str) -> str:
        """A model reference (``task:NAME`` or a Hub id / path) as something `from_pretrained` reads."""
        if ref.startswith("task:"):
            return str(self.task_dir(ref[5:]))
        return ref

    def tokenizer(self):
        """The tokenizer shared by every model of the run (trained on the data, or the model's own)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            m = self.recipe.model
            source = str(self.task_dir("tokenizer")) if m.shape is not None else (m.tokenizer or m.name_or_path)
            tok = AutoTokenizer.from_pretrained(source)
            if tok.pad_token is None and tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            self._tokenizer = tok
        return self._tokenizer


def split_uses(recipe: Recipe) -> dict[str, str] | None:
    """The TOFU- or MUSE-style splits the recipe's stages read, each with what reads it (None: load every split, as
    for a generated benchmark, a TOFU tokenizer trained on every string, or a WMDP-style benchmark)."""
    from ..benchmarks.registry import get_benchmark
    from ..pruning.registry import PRUNERS

    d, m = recipe.data, recipe.model
    bench = get_benchmark(d.benchmark)
    if bench.protocol not in ("tofu", "muse") or (bench.generated and d.data_dir is None) or (
            m.shape is not None and bench.protocol == "tofu"):
        return None
    uses: dict[str, str] = {}
    if m.shape is not None:  # MUSE-style: the tokenizer learns every raw text (tokenizer_texts)
        from ..benchmarks.muse.data import TRAINING_SPLITS

        for split in TRAINING_SPLITS:
            uses.setdefault(split, "the tokenizer (model.shape: trained on every raw text)")
    for role, sec in (("target", recipe.train_target), ("retain", recipe.train_retain)):
        if sec.enabled:
            for split in sec.splits or default_splits(recipe, role):
                uses.setdefault(split, f"training the {role} model (train_{role}.splits)")
    p = recipe.prune
    if p.enabled and p.calibration_path is None and any(PRUNERS[x].statistic is not None for x in p.method):
        for split in bench.calibration_splits(p.calibration_split):
            uses.setdefault(split, "pruning calibration (prune.calibration_split)")
    if recipe.unlearn.enabled:
        forget, retain = bench.unlearning_splits(retain_split=recipe.unlearn.retain_split, subset=d.subset,
                                                 **bench.data_options(d))
        uses.setdefault(forget, "unlearning (the forget set)")
        uses.setdefault(retain, "unlearning (the retain set, unlearn.retain_split)")
    *evaluated, holdout = bench.evaluation_splits(subset=d.subset, **bench.data_options(d))
    for split in evaluated:
        uses.setdefault(split, "the evaluation")
    uses.setdefault(holdout, "membership inference in the evaluation (the non-members)")
    return uses


def load_data(recipe: Recipe) -> dict[str, list[dict]]:
    """The splits of the recipe's benchmark that its stages read (see `split_uses`; every split when unknown)."""
    from ..benchmarks.registry import load_benchmark

    d = recipe.data
    uses = split_uses(recipe)
    offline_hint = "" if d.data_dir is not None else " Offline? Point data.data_dir at a local copy."
    kwargs = dict(data_dir=d.data_dir, preset=d.preset, seed=d.seed, subset=d.subset)
    if uses is None:
        try:
            return load_benchmark(d.benchmark, **kwargs)
        except Exception as err:  # noqa: BLE001 - say which setting to change, before any work
            hint = "" if "data_dir" in str(err) else offline_hint
            raise RecipeError(f"data: could not load the {d.benchmark} benchmark ({type(err).__name__}: {err})"
                              f"{hint}") from err
    data, missing = {}, []
    for split, use in uses.items():
        try:
            data.update(load_benchmark(d.benchmark, splits=[split], **kwargs))
        except Exception as err:  # noqa: BLE001
            if isinstance(err, FileNotFoundError):  # every missing split is named at once
                missing.append((split, use, err))
                continue
            hint = "" if "data_dir" in str(err) else offline_hint
            raise RecipeError(f"data: could not load split {split!r} of the {d.benchmark} benchmark, read by {use} "
                              f"({type(err).__name__}: {err}){hint}") from err
    if missing:
        hint = "" if all("data_dir" in str(e) for _, _, e in missing) else offline_hint
        parts = [f"split {split!r}, read by {use} ({type(err).__name__}: {err})" for split, use, err in missing]
        head = "could not load " + ("" if len(missing) == 1 else f"{len(missing)} splits: ")
        raise RecipeError(f"data: {head}" + "; ".join(parts) + f" (the {d.benchmark} benchmark){hint}")
    return data


def data_fingerprint(recipe: Recipe, load: Callable[[], dict] | None = None) -> dict:
    """What identifies the data in a hash: the synthetic generator's inputs, or the rows themselves."""
    from ..benchmarks.registry import get_benchmark
    from ..evaluation.results import data_fingerprint as rows_digest

    d = recipe.data
    bench = get_benchmark(d.benchmark)
    if bench.generated and d.data_dir is None:
        return {"benchmark": d.benchmark, "preset": d.preset, "seed": d.seed,
                "generator": file_digest(bench.generator_file())}
    data = load() if load is not None else load_data(recipe)
    out = {"benchmark": d.benchmark, "data_dir": d.data_dir, "rows": rows_digest(data)}
    if d.subset is not None:
        out["subset"] = d.subset
    return out


def file_digest(path: str) -> str:
    """The first 16 hex digits of a file's sha256 (a generator's or the model code's, in task hashes)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def model_fingerprint(ref: str) -> dict:
    """A Hub id as it is; a local directory with its files' names, sizes and mtimes."""
    out: dict[str, Any] = {"ref": ref}
    if os.path.isdir(ref):
        from ..evaluation.results import model_fingerprint

        out["files"] = model_fingerprint(ref)
    return out


# ----------------------------------------------------------------------------------------- helpers


def default_splits(recipe: Recipe, role: str) -> list[str]:
    """The benchmark's training splits of the ``target`` or ``retain`` model."""
    from ..benchmarks.registry import get_benchmark

    bench = get_benchmark(recipe.data.benchmark)
    return bench.train_splits(role, subset=recipe.data.subset, **bench.data_options(recipe.data))
