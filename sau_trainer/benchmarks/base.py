"""The contract of a benchmark (`Benchmark`): what the CLI, the recipe schema and the pipeline ask of every entry
of the registry (`sau_trainer.benchmarks.registry.BENCHMARKS`).

A benchmark brings everything an experiment needs from it:
- its **loader** (`Benchmark.load`): ``{split name: rows}``, from the Hub, a local directory in the
  Hub's layout, or a seeded generator;
- the **training rows** of the target and the retain model (`train_splits`, `training_rows`);
- the **forget and retain sets** for unlearning (`unlearning_splits`, `unlearning_rows`);
- its **evaluation** (`evaluate`), which returns ``{"summary", "per_example", ...}`` for ``results.json``,
  and what the report shows of it (`report`, a `ReportSpec`).

Settings of one protocol only (TOFU's ``forget_split``) are not part of this contract: a benchmark lists the
``data:`` recipe settings its methods take in `data_settings`, and its callers pass them as keywords
(`data_options`). Each built-in protocol is one package beside this module (``tofu/``, ``muse/``, ``wmdp/``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from .report_spec import ReportSpec
from .tofu.report import TOFU_REPORT


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark. Subclasses implement one protocol; instances fix the data source."""

    name: str
    help: str
    protocol: str = "tofu"
    subsets: tuple[str, ...] = ()
    default_subset: str | None = None
    presets: tuple[str, ...] = ()  # non-empty for generated benchmarks
    report: ReportSpec = field(default=TOFU_REPORT)
    # The ``data:`` recipe settings (DataSection fields) the split and evaluation methods take as keywords
    data_settings: tuple[str, ...] = ()
    # The module of the seeded generator of a generated benchmark (its source's digest is in the pipeline's hashes)
    generator: str | None = None

    @property
    def generated(self) -> bool:
        return bool(self.presets)

    def data_options(self, data: Any) -> dict[str, Any]:
        """The keywords of `data_settings`, read from a recipe's ``data:`` section (or any object with them)."""
        return {key: getattr(data, key) for key in self.data_settings}

    # ------------------------------------------------------------------ data
    def load(self, splits: Iterable[str] | None = None, data_dir: str | Path | None = None, preset: str = "tiny",
             seed: int = 0, subset: str | None = None) -> dict[str, list[dict]]:
        raise NotImplementedError

    def generator_file(self) -> str | None:
        """The generator's source file (its digest identifies generated data in the pipeline's hashes): the file of
        the `generator` module, None for data that is not generated."""
        if not self.generated or self.generator is None:
            return None
        return import_module(self.generator).__file__

    def check_options(self, subset: str | None = None, preset: str | None = None) -> list[str]:
        """Problems with a subset / preset choice (empty when fine)."""
        problems = []
        if subset is not None and subset not in self.subsets:
            problems.append(f"{self.name} has no subset {subset!r}" + (
                f"; choose one of {list(self.subsets)}" if self.subsets else " (it has no subsets)"))
        if preset is not None and self.generated and preset not in self.presets:
            problems.append(f"{self.name} has no preset {preset!r}; choose one of {list(self.presets)}")
        return problems

    def evaluation_splits(self, subset: str | None = None, **options: Any) -> tuple[str, ...]:
        """The splits the evaluation reads, the membership-inference holdout last (`options`: `data_settings`)."""
        raise NotImplementedError

    def train_splits(self, role: str, subset: str | None = None, **options: Any) -> list[str]:
        """Default training splits of the ``target`` or ``retain`` model (`subset`: where the names depend on it)."""
        raise NotImplementedError

    def training_rows(self, splits_data: Mapping[str, list[dict]], splits: Iterable[str]) -> list[dict]:
        raise NotImplementedError

    def unlearning_splits(self, retain_split: str | None = None, subset: str | None = None,
                          **options: Any) -> tuple[str, str]:
        """The forget and the retain split of unlearning (`retain_split`: the recipe's choice, if any)."""
        raise NotImplementedError

    def unlearning_rows(self, splits_data: Mapping[str, list[dict]], split: str, tokenizer: Any = None,
                        max_length: int | None = None) -> list[dict]:
        raise NotImplementedError

    def calibration_texts(self, splits_data: Mapping[str, list[dict]], split: str, tokenizer: Any) -> list[str]:
        raise NotImplementedError

    def calibration_splits(self, split: str) -> list[str]:
        """The splits `calibration_texts` reads for `split` (what the pipeline must load for it)."""
        return [split]

    def tokenizer_texts(self, splits_data: Mapping[str, list[dict]]) -> list[str]:
        """Every string of the benchmark, for a tokenizer trained from scratch."""
        texts: list[str] = []
        for rows in splits_data.values():
            for r in rows:
                for v in r.values():
                    if isinstance(v, str):
                        texts.append(v)
                    elif isinstance(v, list | tuple):
                        texts += [x for x in v if isinstance(x, str)]
        return [t for t in texts if t]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: Any, tokenizer: Any, splits_data: Mapping[str, Any], *, batch_size: int = 16,
                 max_new_tokens: int = 200, max_length: int | None = None, retain_results: Any = None,
                 show_progress: bool = True, compat: str | None = None, question_key: str = "question",
                 **options: Any) -> dict[str, Any]:
        """The protocol's evaluation; `compat`: the metric definitions (`sau_trainer.evaluation.compat`);
        `options`: the `data_settings` keywords."""
        raise NotImplementedError


def no_question_key(question_key: str, protocol: str) -> None:
    """Refuse a TOFU question column for a protocol that asks its own prompts."""
    if question_key != "question":
        raise ValueError(f"question_key={question_key!r} is for the TOFU protocol; {protocol} asks its own prompts.")


def split_rows(splits_data: Mapping[str, list[dict]], name: str) -> list[dict]:
    """The rows of split `name`, with a clear error naming the splits there are."""
    if name not in splits_data:
        raise KeyError(f"The benchmark has no split {name!r}; it has {sorted(splits_data)}.")
    return splits_data[name]


def select_splits(benchmark: str, bench: dict, names: list[str], parse_split) -> dict:
    """`names` of a generated benchmark, each checked by `parse_split`; an unknown name is an error listing the
    benchmark's splits."""
    for n in names:
        parse_split(n)
    unknown = [n for n in names if n not in bench]
    if unknown:
        raise ValueError(f"The {benchmark} benchmark has no split(s) {unknown}; it has {list(bench)}.")
    return {n: bench[n] for n in names}


__all__ = ["Benchmark", "no_question_key", "select_splits", "split_rows"]
