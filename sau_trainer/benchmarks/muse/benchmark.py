"""The MUSE protocol's registry class (`MuseStyleBenchmark`): MUSE itself and the built-in ``synthetic-muse``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import Benchmark, no_question_key, select_splits, split_rows
from ..report_spec import ReportSpec
from .report import MUSE_REPORT


@dataclass(frozen=True)
class MuseStyleBenchmark(Benchmark):
    """The MUSE protocol (METHODS.md section 3) on splits named ``<config>/<split>``.

    The target model trains on ``raw/forget`` + ``raw/retain1`` + ``raw/retain2``, the retain model on
    ``raw/retain1`` + ``raw/retain2``; unlearning forgets ``raw/forget`` and retains ``raw/retain1``
    (open-unlearning's setup), both joined and cut into chunks of the unlearning ``max_length``.
    The TOFU forget split (accepted as the first argument of the split methods and by `evaluate`, for callers of
    the signatures before issue 25; unused) and the evaluation's ``max_new_tokens`` do not apply (MUSE fixes its
    generation lengths: 128 tokens for VerbMem, 32 for KnowMem).
    """

    protocol: str = "muse"
    generator: str | None = "sau_trainer.data.synthetic_muse"
    report: ReportSpec = field(default=MUSE_REPORT)

    def load(self, splits=None, data_dir=None, preset="tiny", seed=0, subset=None):
        from .data import load_muse

        if not self.generated:
            return load_muse(splits, data_dir, subset or self.default_subset)
        from ...data.synthetic_muse import generate_muse_benchmark
        from .data import load_local_muse_split, parse_split

        if data_dir is not None:  # files written by write_muse_benchmark: read them like MUSE's
            names = list(splits) if splits is not None else list(generate_muse_benchmark(preset, seed))
            return {n: load_local_muse_split(data_dir, n) for n in names}
        bench = generate_muse_benchmark(preset, seed)
        names = list(splits) if splits is not None else list(bench)
        return select_splits(self.name, bench, names, parse_split)

    def evaluation_splits(self, forget_split=None, subset=None):
        from .data import EVALUATION_SPLITS

        return EVALUATION_SPLITS

    def train_splits(self, role, forget_split=None, subset=None):
        return (["raw/forget"] if role == "target" else []) + ["raw/retain1", "raw/retain2"]

    def training_rows(self, splits_data, splits):
        return [{"text": r["text"]} for s in splits for r in split_rows(splits_data, s)]

    def unlearning_splits(self, forget_split=None, retain_split=None, subset=None):
        return "raw/forget", retain_split or "raw/retain1"

    def unlearning_rows(self, splits_data, split, tokenizer=None, max_length=None):
        from .data import chunk_texts

        if tokenizer is None or max_length is None:
            raise ValueError(f"{self.name}: unlearning rows are token chunks; pass the tokenizer and max_length.")
        return chunk_texts([r["text"] for r in split_rows(splits_data, split)], tokenizer, max_length)

    def tokenizer_texts(self, splits_data):
        """The raw texts, each once: every other split repeats pieces of them, and counting a subject's text
        more often than another's would make its tokens shorter (a length bias in membership inference)."""
        raw = [r["text"] for name, rows in splits_data.items() if name.startswith("raw/") for r in rows]
        return list(dict.fromkeys(raw)) if raw else list(dict.fromkeys(super().tokenizer_texts(splits_data)))

    def calibration_splits(self, split):
        """``full`` (the TOFU name) means every text the target model was trained on."""
        return self.train_splits("target") if split == "full" else [split]

    def calibration_texts(self, splits_data, split, tokenizer):
        """Texts of `split` (see `calibration_splits`)."""
        return [r["text"] for s in self.calibration_splits(split) for r in split_rows(splits_data, s)]

    def evaluate(self, model, tokenizer, splits_data, *, forget_split=None, batch_size=16, max_new_tokens=200,
                 max_length=None, retain_results=None, show_progress=True, max_rows=None, max_prompt_tokens=None,
                 compat=None, question_key="question"):
        from .evaluation import evaluate_muse

        no_question_key(question_key, "MUSE")

        return evaluate_muse(model, tokenizer, splits_data, batch_size=batch_size, max_length=max_length,
                             retain_results=retain_results, show_progress=show_progress, max_rows=max_rows,
                             max_prompt_tokens=max_prompt_tokens, compat=compat)


__all__ = ["MuseStyleBenchmark"]
