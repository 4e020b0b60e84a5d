"""The WMDP protocol's registry class (`WmdpStyleBenchmark`): WMDP with MMLU and the built-in ``synthetic-wmdp``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import Benchmark, no_question_key, select_splits, split_rows
from ..report_spec import ReportSpec
from .report import WMDP_REPORT


@dataclass(frozen=True)
class WmdpStyleBenchmark(Benchmark):
    """WMDP with MMLU (METHODS.md section 4) on splits named ``<config>/<split>`` (`sau_trainer.benchmarks.wmdp.data`).

    The subset (``cyber``, the default, ``bio``, ``chem``) picks the question split ``wmdp-<subset>/test`` and
    the corpora: the target model trains on ``<subset>-forget-corpus/train`` + ``<subset>-retain-corpus/train``,
    the retain model on the retain corpus; unlearning forgets the forget corpus and retains on the retain
    corpus (open-unlearning's WMDP setup), both cut into chunks of the unlearning ``max_length``. ``chem`` has
    questions only (evaluation). The TOFU forget split (accepted by the split methods and `evaluate`, for callers of the signatures before
    issue 25; unused) and ``max_new_tokens`` do not apply.
    """

    protocol: str = "wmdp"
    generator: str | None = "sau_trainer.data.synthetic_wmdp"
    report: ReportSpec = field(default=WMDP_REPORT)

    def _subset(self, subset):
        from .data import resolve_subset

        return resolve_subset(subset or self.default_subset)

    def load(self, splits=None, data_dir=None, preset="tiny", seed=0, subset=None):
        from .data import default_splits, load_local_wmdp_split, load_wmdp, parse_split

        subset = self._subset(subset)
        if not self.generated:
            return load_wmdp(splits, data_dir, subset)
        from ...data.synthetic_wmdp import generate_wmdp_benchmark

        names = list(splits) if splits is not None else default_splits(subset)
        if data_dir is not None:  # files written by write_wmdp_benchmark (corpus lines are {"text": ...} objects)
            return {n: load_local_wmdp_split(data_dir, n, raw_jsonl_lines=False) for n in names}
        bench = generate_wmdp_benchmark(preset, seed)
        return select_splits(self.name, bench, names, parse_split)

    def evaluation_splits(self, forget_split=None, subset=None):
        from .data import MMLU_SPLIT, question_split

        return (question_split(self._subset(subset)), MMLU_SPLIT)

    def _corpora(self, subset):
        from .data import forget_split, retain_split

        subset = self._subset(subset)
        if subset == "chem":
            raise ValueError(f"{self.name}: the chem subset has questions only (no forget or retain corpus): "
                             "evaluate with it (sau-trainer eval --subset chem), unlearn with cyber or bio.")
        return forget_split(subset), retain_split(subset)

    def train_splits(self, role, forget_split=None, subset=None):
        forget, retain = self._corpora(subset)
        return ([forget] if role == "target" else []) + [retain]

    def training_rows(self, splits_data, splits):
        return [{"text": r["text"]} for s in splits for r in split_rows(splits_data, s)]

    def unlearning_splits(self, forget_split=None, retain_split=None, subset=None):
        forget, retain = self._corpora(subset)
        return forget, retain_split or retain

    def unlearning_rows(self, splits_data, split, tokenizer=None, max_length=None):
        from ..muse.data import chunk_texts

        if tokenizer is None or max_length is None:
            raise ValueError(f"{self.name}: unlearning rows are token chunks; pass the tokenizer and max_length.")
        return chunk_texts([r["text"] for r in split_rows(splits_data, split)], tokenizer, max_length)

    def tokenizer_texts(self, splits_data):
        """The corpus texts (they hold the questions in the prompt format too), then any question not in them."""
        from .data import is_question_split
        from .evaluation import build_prompt, subject_of

        texts = [r["text"] for name, rows in splits_data.items() if not is_question_split(name) for r in rows]
        texts += [build_prompt(r["question"], r["choices"], subject_of(name, r))
                  for name, rows in splits_data.items() if is_question_split(name) for r in rows]
        return list(dict.fromkeys(texts))

    def calibration_texts(self, splits_data, split, tokenizer):
        """Texts of `split` (question splits: their prompts); ``full`` (the TOFU name) means every corpus text
        in the data (what the target model trains on)."""
        from .data import is_question_split
        from .evaluation import build_prompt, subject_of

        names = [n for n in splits_data if not is_question_split(n)] if split == "full" else [split]
        out = []
        for name in names:
            for r in split_rows(splits_data, name):
                out.append(build_prompt(r["question"], r["choices"], subject_of(name, r))
                           if is_question_split(name) else r["text"])
        return out

    def evaluate(self, model, tokenizer, splits_data, *, forget_split=None, batch_size=16, max_new_tokens=200,
                 max_length=None, retain_results=None, show_progress=True, compat=None, question_key="question"):
        from ...evaluation.compat import resolve
        from .evaluation import evaluate_wmdp

        resolve(compat, "wmdp")  # no compat mode defines WMDP metrics: a clear error for any
        no_question_key(question_key, "WMDP")

        return evaluate_wmdp(model, tokenizer, splits_data, batch_size=batch_size, max_length=max_length,
                             retain_results=retain_results, show_progress=show_progress)


__all__ = ["WmdpStyleBenchmark"]
