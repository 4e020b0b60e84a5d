"""Tokenising question/answer and text rows, with the loss on answer tokens only.

This module is the one place that owns the prompt format. A tokenizer with a chat template
gets it (one user turn, generation prompt added); a tokenizer without one gets the plain
format ``"Question: {question}\\nAnswer: "``. Labels are -100 on the prompt and on padding;
the answer tokens and a closing EOS are supervised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer: "


def format_prompt(question: str, tokenizer: Any) -> str:
    """The prompt text for `question`: the chat template if the tokenizer has one, else `PLAIN_PROMPT`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_PROMPT.format(question=question)


def _prefix_ids(tokenizer: Any) -> list[int]:
    # A BOS token opens the plain format when the tokenizer defines one (chat templates add their own).
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None and not getattr(tokenizer, "chat_template", None) else []


def encode_prompt(tokenizer: Any, question: str) -> list[int]:
    """Token ids of the prompt for `question` (what generation starts from)."""
    text = format_prompt(question, tokenizer)
    return _prefix_ids(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("The tokenizer has no EOS token; set `tokenizer.eos_token` before training.")
    return eos


def encode_qa(tokenizer: Any, question: str, answer: str, max_length: int | None = None) -> dict[str, list[int]]:
    """Prompt + answer + EOS, with labels only on the answer and EOS. Truncates the answer end first."""
    prompt = encode_prompt(tokenizer, question)
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [_eos_id(tokenizer)]
    if max_length is not None and len(prompt) + len(target) > max_length:
        keep = max_length - len(prompt)
        if keep < 1:
            raise ValueError(
                f"The prompt alone has {len(prompt)} tokens, more than max_length={max_length}: raise max_length."
            )
        target = target[:keep]
    ids = prompt + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + target}


def encode_text(tokenizer: Any, text: str, max_length: int | None = None) -> dict[str, list[int]]:
    """Plain text (+ EOS), every token supervised."""
    ids = _prefix_ids(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"] + [_eos_id(tokenizer)]
    if max_length is not None:
        ids = ids[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)}


def row_kind(columns: Iterable[str]) -> str:
    """``"qa"`` for rows with question/answer, ``"text"`` for rows with text, ``"tokens"`` if pre-tokenised."""
    cols = set(columns)
    if {"input_ids", "labels"} <= cols:
        return "tokens"
    if {"question", "answer"} <= cols:
        return "qa"
    if "text" in cols:
        return "text"
    raise ValueError(
        f"Rows need either `question` and `answer` columns or a `text` column (or `input_ids` and `labels`); "
        f"got columns {sorted(cols)}."
    )


def encoded_length(tokenizer: Any, row: Mapping[str, Any], kind: str) -> int:
    """Tokens of `row` before any truncation (what `encode_qa` / `encode_text` would make without a limit)."""
    if kind == "qa":
        return len(encode_prompt(tokenizer, row["question"])) + len(
            tokenizer(row["answer"], add_special_tokens=False)["input_ids"]) + 1
    if kind == "text":
        return len(_prefix_ids(tokenizer)) + len(tokenizer(row["text"], add_special_tokens=False)["input_ids"]) + 1
    return len(row["input_ids"])


def tokenize_rows(rows: Any, tokenizer: Any, max_length: int | None = None, name: str = "dataset",
                  model: Any = None) -> list[dict]:
    """Tokenise a `datasets.Dataset` or a list of dicts; each output row keeps its position as `index`.

    With `model`, `max_length` is lowered to the model's positions (a row is never longer than the model
    accepts). Rows cut to the limit are counted and logged in one line: how many, and how many tokens each
    lost (pre-tokenised rows longer than the limit are cut too)."""
    from .truncation import TruncationCount, cap_length

    if model is not None:
        max_length = cap_length(max_length, model)
    if rows is None:
        raise ValueError(f"The {name} is None.")
    if hasattr(rows, "column_names"):
        columns = rows.column_names
        rows = rows.to_list() if hasattr(rows, "to_list") else list(rows)
    else:
        rows = list(rows)
        columns = list(rows[0].keys()) if rows else []
    if not rows:
        raise ValueError(f"The {name} is empty: give it at least one row.")
    try:
        kind = row_kind(columns)
    except ValueError as e:
        raise ValueError(f"The {name} has the wrong columns. {e}") from None
    if kind != "tokens" and tokenizer is None:
        raise ValueError(f"The {name} needs tokenising: pass `processing_class=tokenizer`.")
    out = []
    cut = TruncationCount(f"{name[:1].upper()}{name[1:]} rows", max_length)
    for i, row in enumerate(rows):
        if kind == "qa":
            enc = encode_qa(tokenizer, row["question"], row["answer"], max_length)
        elif kind == "text":
            enc = encode_text(tokenizer, row["text"], max_length)
        else:
            enc = {k: list(row[k]) for k in ("input_ids", "labels")}
            enc["attention_mask"] = list(row.get("attention_mask") or [1] * len(enc["input_ids"]))
            if max_length is not None:
                enc = {k: v[:max_length] for k, v in enc.items()}
        lost = 0
        if max_length is not None and len(enc["input_ids"]) >= max_length:  # perhaps cut: count what was lost
            lost = encoded_length(tokenizer, row, kind) - len(enc["input_ids"])
        cut.add(name, lost)
        if not any(label != IGNORE_INDEX for label in enc["labels"]):
            raise ValueError(f"Row {i} of the {name} has no supervised token after tokenisation; check max_length.")
        enc["index"] = i
        out.append(enc)
    cut.log()
    return out


class RowsDataset(torch.utils.data.Dataset):
    """Encoded rows as a map-style dataset; `drop` removes keys the model must not receive (e.g. ``index``)."""

    def __init__(self, rows: list[dict], drop: tuple[str, ...] = ()):
        self.rows, self.drop = rows, drop

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {k: v for k, v in row.items() if k not in self.drop} if self.drop else row


class QACollator:
    """Pads a list of encoded rows to one batch. ``padding_side="left"`` is for generation."""

    def __init__(self, tokenizer: Any = None, padding_side: str = "right", pad_token_id: int | None = None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = 0 if pad_token_id is None else pad_token_id
        self.padding_side = padding_side

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch: dict[str, torch.Tensor] = {}
        for key, pad in pads.items():
            if key not in features[0]:
                continue
            seqs = []
            for f in features:
                seq = list(f[key])
                fill = [pad] * (length - len(seq))
                seqs.append(fill + seq if self.padding_side == "left" else seq + fill)
            batch[key] = torch.tensor(seqs, dtype=torch.long)
        if "index" in features[0]:
            batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
        return batch
