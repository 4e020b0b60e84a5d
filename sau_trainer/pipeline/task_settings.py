"""Typed views of the settings the stages read back from their task (``task.settings``, what the runner hashes).

The planner writes task settings as plain mappings, since their JSON form is the cache key and must not change;
the stages read them through these dataclasses instead of indexing nested dicts (``s["unlearn"]["sau_topk"]``), so
a reader can follow a recipe field to the argument it sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .schema import TrainerSettings


@dataclass(frozen=True)
class EvaluateSettings:
    """An evaluate task's ``evaluate`` settings (`EvaluateSection` less its attack and placement settings)."""

    batch_size: int
    max_new_tokens: int
    max_length: int | None
    compat: str | None = None
    question_key: str = "question"
    max_prompt_tokens: int | None = None

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> EvaluateSettings:
        e = settings["evaluate"]
        return cls(**{f.name: e[f.name] for f in fields(cls) if f.name in e})

    def evaluate_kwargs(self) -> dict[str, Any]:
        """The keywords of `Benchmark.evaluate` these settings give (``max_prompt_tokens`` only where set)."""
        out = dict(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, max_length=self.max_length,
                   compat=self.compat, question_key=self.question_key)
        if self.max_prompt_tokens:
            out["max_prompt_tokens"] = self.max_prompt_tokens
        return out


@dataclass(frozen=True)
class UnlearnSettings:
    """One unlearning grid point, as its unlearn task's settings hold it."""

    objective: str
    sau: bool
    learning_rate: float
    seed: int
    trainer: TrainerSettings  # the section's trainer settings, with ``args`` (SAUConfig fields, grid axes)
    sau_topk: float
    sau_alpha: float
    forget_split: str
    retain_split: str

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> UnlearnSettings:
        u = settings["unlearn"]
        return cls(objective=settings["objective"], sau=settings["sau"], learning_rate=settings["learning_rate"],
                   seed=settings["seed"], trainer=trainer_settings(u), sau_topk=u["sau_topk"],
                   sau_alpha=u["sau_alpha"], forget_split=settings["forget_split"],
                   retain_split=settings["retain_split"])


def trainer_settings(section: Mapping[str, Any]) -> TrainerSettings:
    """The `TrainerSettings` of a section's settings (an unlearn point's, which a relearning attack reuses)."""
    return TrainerSettings(**{k: section[k] for k in TrainerSettings.__dataclass_fields__})


__all__ = ["EvaluateSettings", "UnlearnSettings", "trainer_settings"]
