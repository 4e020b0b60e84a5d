"""Alternate answers for AltPO (and DPO on any alternate answers): where they come from, and the seeded
choice of one alternate per forget example and epoch.

Sources, in AltPO's order of preference (`SAUConfig.alternate_source="auto"` takes the first available):

1. ``column``: a column of the forget rows that the user names (`alternate_column`), a string or a list of
   strings per row;
2. ``perturbed``: the benchmark's own perturbed answers, TOFU's ``perturbed_answer`` (a list per row; the
   built-in ``tofu-synthetic`` benchmark has the same column). TOFU keeps them in ``forgetNN_perturbed``,
   whose questions are the forget split's: `attach_perturbed` copies them onto the forget rows;
3. ``generate``: the starting model itself, asked by a user-given prompt template (`alternate_prompt`, with
   ``{question}`` and ``{answer}``) for a plausible different answer, as Mekala et al. 2024 generate theirs
   with an instruct model. Greedy, once at train start; the generated tokens are saved with every
   checkpoint, so a resumed run keeps the alternates of its start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

PERTURBED_COLUMN = "perturbed_answer"


def check_alternate_settings(source: str, column: str | None, prompt: str | None) -> None:
    """A clear error for settings that cannot give alternates, before anything runs."""
    if source == "column" and not column:
        raise ValueError("alternate_source='column' needs alternate_column: the forget rows' column holding the "
                         "alternate answer(s).")
    if source == "generate" and not prompt:
        raise ValueError("alternate_source='generate' needs alternate_prompt: a template with {question} and "
                         "{answer}, e.g. 'Give a plausible but different answer to: {question} (not: {answer})'.")
    if prompt is not None:
        try:
            filled = prompt.format(question="\0q", answer="\0a")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"alternate_prompt={prompt!r} is not a template with only {{question}} and {{answer}} "
                             f"placeholders ({type(err).__name__}: {err}); write literal braces as {{{{ }}}}.") from None
        if "\0q" not in filled:
            raise ValueError(f"alternate_prompt={prompt!r} has no {{question}} placeholder: the model must see the "
                             "question it answers differently.")


def rows_and_columns(dataset: Any) -> tuple[list[dict], list[str]]:
    """The rows of a `datasets.Dataset` or a list of dicts, and its column names."""
    if hasattr(dataset, "column_names"):
        columns = list(dataset.column_names)
        rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    else:
        rows = list(dataset)
        columns = list(rows[0].keys()) if rows else []
    return rows, columns


def resolve_source(source: str, column: str | None, prompt: str | None, columns: Sequence[str]) -> str:
    """``column``, ``perturbed`` or ``generate``: the source the settings and the forget rows' columns give."""
    if source == "auto":
        if column:
            source = "column"
        elif PERTURBED_COLUMN in columns:
            source = "perturbed"
            if prompt:
                logger.info("AltPO: the forget rows have perturbed answers, which come before generation; "
                            "alternate_prompt is not used (alternate_source='generate' to generate anyway).")
        elif prompt:
            source = "generate"
        else:
            raise ValueError(
                "AltPO needs alternate answers and found none: name a column of the forget rows "
                f"(alternate_column), give rows with TOFU's {PERTURBED_COLUMN!r} (forget columns: {sorted(columns)}), "
                "or let the model generate them (alternate_prompt, a template with {question} and {answer})."
            )
    if source == "column" and column not in columns:
        raise ValueError(f"alternate_column={column!r} is not a column of the forget rows; they have "
                         f"{sorted(columns)}.")
    if source == "perturbed" and PERTURBED_COLUMN not in columns:
        raise ValueError(f"alternate_source='perturbed' needs a {PERTURBED_COLUMN!r} column in the forget rows (they "
                         f"have {sorted(columns)}); TOFU keeps it in forgetNN_perturbed.")
    return source


def alternates_from_column(rows: Sequence[dict], column: str) -> list[list[str]]:
    """Each row's alternate answers from `column` (a string, or a non-empty list of strings)."""
    out = []
    for i, row in enumerate(rows):
        value = row.get(column)
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(v, str) and v.strip() for v in value)):
            raise ValueError(f"Row {i} of the forget set: column {column!r} must hold an alternate answer (a non-empty "
                             f"string) or a non-empty list of them, got {value!r}.")
        out.append([v.strip() for v in value])
    return out


def attach_perturbed(rows: Sequence[dict], perturbed_rows: Sequence[dict] | None) -> list[dict]:
    """`rows` with the ``perturbed_answer`` of the row of `perturbed_rows` that has the same question.

    TOFU's ``forgetNN_perturbed`` holds the forget split's questions with their perturbed answers; the forget
    split itself has none. Rows whose question is not found are returned as they are.
    """
    if not perturbed_rows:
        return [dict(r) for r in rows]
    by_question = {r["question"]: r[PERTURBED_COLUMN] for r in perturbed_rows
                   if "question" in r and PERTURBED_COLUMN in r}
    out = []
    for r in rows:
        r = dict(r)
        if PERTURBED_COLUMN not in r and r.get("question") in by_question:
            r[PERTURBED_COLUMN] = list(by_question[r["question"]])
        out.append(r)
    return out


@torch.no_grad()
def generate_alternates(model: torch.nn.Module, tokenizer: Any, questions: Sequence[str], answers: Sequence[str],
                        template: str, max_new_tokens: int, batch_size: int = 8) -> list[list[int]]:
    """Greedy completions of ``template.format(question=..., answer=...)`` (in the tokenizer's prompt format),
    cut at the first EOS: the token ids of one alternate answer per question."""
    from .qa import QACollator, encode_prompt

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    collate = QACollator(tokenizer, padding_side="left")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(questions), batch_size):
            feats = []
            for q, a in zip(questions[start:start + batch_size], answers[start:start + batch_size], strict=True):
                ids = encode_prompt(tokenizer, template.format(question=q, answer=a))
                feats.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            batch = {k: v.to(device) for k, v in collate(feats).items()}
            gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for row in gen[:, batch["input_ids"].size(1):].tolist():
                out.append(row[: row.index(eos)] if eos in row else row)
    finally:
        model.train(was_training)
    empty = sum(1 for ids in out if not ids)
    if empty:
        logger.warning("AltPO: %d of %d generated alternate answers are empty (the EOS came first); those questions "
                       "get an empty alternate (EOS alone). Check alternate_prompt and the model.", empty, len(out))
    return out


def pack_token_lists(lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[n, max_len]`` int64, -1 after each list's end (saved with checkpoints)."""
    width = max((len(x) for x in lists), default=0)
    out = torch.full((len(lists), max(width, 1)), -1, dtype=torch.long)
    for i, ids in enumerate(lists):
        out[i, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    return out


def unpack_token_lists(packed: torch.Tensor) -> list[list[int]]:
    return [[t for t in row if t >= 0] for row in packed.cpu().tolist()]


def alternate_choices(counts: Sequence[int], num_epochs: int, seed: int, fixed: bool) -> torch.Tensor:
    """``[num_epochs, n]``: which of its ``counts[i]`` alternates forget example i gets in each epoch.

    Seeded by (seed, epoch) as the idk answers' draw, so the pairs of the whole run (and the reference
    log-likelihoods they need) are known before training; `fixed` keeps epoch 0's draw for every epoch.
    """
    counts_t = torch.tensor(list(counts), dtype=torch.float64)
    rows = []
    for epoch in range(1 if fixed else num_epochs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (epoch + 1) + 17)
        u = torch.rand(len(counts_t), generator=g, dtype=torch.float64)
        rows.append(torch.minimum((u * counts_t).long(), counts_t.long() - 1))
    out = torch.stack(rows)
    return out.expand(num_epochs, -1).clone() if fixed else out


class AlternatePairing:
    """The forget questions, each one's alternate answers, and which alternate it gets in each epoch."""

    def __init__(self, questions: Sequence[str], alternates: Sequence[Sequence[str]], tokenizer: Any, args: Any):
        from .qa import QACollator

        if len(questions) != len(alternates):
            raise ValueError(f"{len(alternates)} lists of alternate answers for {len(questions)} forget questions.")
        self.questions, self.alternates = list(questions), [list(a) for a in alternates]
        if any(not a for a in self.alternates):
            raise ValueError("Every forget question needs at least one alternate answer.")
        self.offsets = [0]
        for a in self.alternates:
            self.offsets.append(self.offsets[-1] + len(a))
        self.tokenizer, self.max_length = tokenizer, args.max_length
        self.seed, self.fixed = int(args.seed), args.idk_pairing == "fixed"
        self.collator = QACollator(tokenizer)
        self.choices: torch.Tensor | None = None

    def draw(self, num_epochs: int) -> torch.Tensor:
        self.choices = alternate_choices([len(a) for a in self.alternates], max(1, int(num_epochs)), self.seed,
                                         self.fixed)
        return self.choices

    def epoch_row(self, epoch: int) -> int:
        if self.choices is None:
            raise RuntimeError("AlternatePairing.draw was not called: the objective calls it at train start.")
        return min(int(epoch), self.choices.size(0) - 1)

    def encode(self, example: int, k: int) -> dict:
        from .qa import encode_qa

        return encode_qa(self.tokenizer, self.questions[example], self.alternates[example][k], self.max_length)

    def unique_pairs(self, choices: torch.Tensor) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """The distinct (example, alternate) pairs of `choices` and, per entry of `choices`, its pair's position."""
        offsets = torch.tensor(self.offsets[:-1], dtype=torch.long)
        keys = offsets.expand_as(choices) + choices
        unique, inverse = torch.unique(keys.flatten(), return_inverse=True)
        starts = torch.tensor(self.offsets[:-1], dtype=torch.long)
        pairs = []
        for key in unique.tolist():
            example = int(torch.searchsorted(starts, torch.tensor(key), right=True)) - 1
            pairs.append((example, key - self.offsets[example]))
        return pairs, inverse

    def encode_pairs(self, pairs: list[tuple[int, int]]) -> list[dict]:
        return [self.encode(i, k) for i, k in pairs]

    def batch(self, index: torch.Tensor, epoch: int, device) -> dict[str, torch.Tensor]:
        """The collated (question, alternate) batch for forget examples `index` in `epoch`, on `device`."""
        row = self.choices[self.epoch_row(epoch)]
        feats = [self.encode(int(i), int(row[int(i)])) for i in index.tolist()]
        return {k: v.to(device) for k, v in self.collator(feats).items()}
