"""The TOFU protocol's registry class (`TofuStyleBenchmark`): TOFU itself and the built-in ``synthetic``."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import Benchmark, split_rows
from .data import GENERAL_SPLITS


def _retain_of(forget_split: str) -> str:
    return f"retain{100 - int(forget_split[-2:]):02d}"


@dataclass(frozen=True)
class TofuStyleBenchmark(Benchmark):
    """The TOFU protocol (SPEC section 5) on question/answer splits with TOFU's names and columns. Its one data
    setting of its own is the forget split (``forget01``, ``forget05``, ``forget10``): the retain split, the
    holdout and the evaluation sets follow from it."""

    data_settings: tuple[str, ...] = ("forget_split",)
    generator: str | None = "sau_trainer.data.synthetic"

    def load(self, splits=None, data_dir=None, preset="tiny", seed=0, subset=None):
        from . import data

        if self.generated:
            return data._load_synthetic(splits, data_dir, preset, seed)
        return data.load_tofu(splits, data_dir)

    def evaluation_splits(self, forget_split="forget10", subset=None):
        from .data import evaluation_splits, holdout_split

        return (*evaluation_splits(forget_split), holdout_split(forget_split))

    def train_splits(self, role, forget_split="forget10", subset=None):
        base = ["full"] if role == "target" else [_retain_of(forget_split)]
        return base + (list(GENERAL_SPLITS) if self.generated else [])

    def training_rows(self, splits_data, splits):
        return [{"question": r["question"], "answer": r["answer"]} for s in splits for r in split_rows(splits_data, s)]

    def unlearning_splits(self, forget_split="forget10", retain_split=None, subset=None):
        return forget_split, retain_split or _retain_of(forget_split)

    def unlearning_rows(self, splits_data, split, tokenizer=None, max_length=None):
        from ...data.alternates import attach_perturbed

        # with the perturbed answers of the same questions (forgetNN_perturbed, where loaded): AltPO's alternates
        return attach_perturbed(self.training_rows(splits_data, [split]), splits_data.get(f"{split}_perturbed"))

    def calibration_texts(self, splits_data, split, tokenizer):
        from ...data.qa import format_prompt

        return [format_prompt(r["question"], tokenizer) + r["answer"] for r in split_rows(splits_data, split)]

    def tokenizer_texts(self, splits_data):
        texts = []
        for rows in splits_data.values():
            for r in rows:
                texts += [r.get("question", ""), r.get("answer", ""), *r.get("perturbed_answer", []),
                          r.get("paraphrased_answer", ""), r.get("paraphrased_question", "")]
        return [t for t in texts if t]

    def evaluate(self, model, tokenizer, splits_data, *, forget_split="forget10", batch_size=16, max_new_tokens=200,
                 max_length=None, retain_results=None, show_progress=True, compat=None, question_key="question",
                 membership_inference=True):
        """`membership_inference`: run the attacks on forget vs holdout answers (`evaluate_tofu`)."""
        from .evaluation import evaluate_tofu

        return evaluate_tofu(model, tokenizer, splits_data, forget_split=forget_split, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, max_length=max_length, retain_results=retain_results,
                             show_progress=show_progress, compat=compat, question_key=question_key,
                             membership_inference=membership_inference)


__all__ = ["GENERAL_SPLITS", "TofuStyleBenchmark"]
