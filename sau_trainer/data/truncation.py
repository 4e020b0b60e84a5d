"""Counting what was cut to fit a length limit, and saying so once.

Rows longer than a model's positions are cut (training rows, teacher-forced answers) and generations near
the limit get fewer new tokens than asked. Each of these is counted per split and logged in one line per
call (one call per stage and purpose): how many rows, in which split, and by how much. Silently training
on cut answers or scoring short generations would bias the numbers without a word.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


def model_positions(model: Any, tokenizer: Any = None) -> int | None:
    """The longest sequence the model accepts: its position limit (and the tokenizer's, if it sets one)."""
    limits = []
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config  # a composite model: its language model's limit
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    return min(limits) if limits else None


def cap_length(max_length: int | None, model: Any = None, tokenizer: Any = None) -> int | None:
    """`max_length`, lowered to the model's positions when it is larger (or None and the model has a limit)."""
    limit = model_positions(model, tokenizer) if model is not None or tokenizer is not None else None
    if limit is None:
        return max_length
    return limit if max_length is None else min(max_length, limit)


@dataclass
class TruncationCount:
    """Rows cut to `limit`, per split: the tokens each cut row lost. `what` names the rows in the log line
    (e.g. "training rows"), `unit` what was lost (e.g. "tokens cut")."""

    what: str
    limit: int | None
    unit: str = "tokens cut"
    totals: dict[str, int] = field(default_factory=dict)
    lost: dict[str, list[int]] = field(default_factory=dict)
    lengths: dict[str, list[int]] = field(default_factory=dict)  # lengths before the cut, when given

    def add(self, split: str, lost_tokens: int, length: int | None = None) -> None:
        """One row of `split`; `lost_tokens` > 0 when it was cut (`length`: its length before the cut, said in
        the log line)."""
        self.totals[split] = self.totals.get(split, 0) + 1
        if lost_tokens > 0:
            self.lost.setdefault(split, []).append(int(lost_tokens))
            if length is not None:
                self.lengths.setdefault(split, []).append(int(length))

    @property
    def n_cut(self) -> int:
        return sum(len(v) for v in self.lost.values())

    def per_split(self) -> dict[str, dict[str, int]]:
        """``{split: {"cut", "of", "max_lost", "total_lost"}}`` for the splits with a cut row."""
        return {s: {"cut": len(v), "of": self.totals[s], "max_lost": max(v), "total_lost": sum(v)}
                for s, v in self.lost.items()}

    def message(self) -> str | None:
        """One line, or None when nothing was cut."""
        if not self.lost:
            return None
        parts = [f"{s}: {d['cut']} of {d['of']} (up to {d['max_lost']} {self.unit}, {d['total_lost']} in all"
                 + (f"; {min(self.lengths[s])}-{max(self.lengths[s])} tokens before the cut" if self.lengths.get(s)
                    else "") + ")"
                 for s, d in self.per_split().items()]
        return f"{self.what} cut to the maximum length {self.limit}: " + "; ".join(parts) + "."

    def log(self, log: logging.Logger | None = None, level: int = logging.WARNING) -> None:
        text = self.message()
        if text:
            (log or logger).log(level, text)
