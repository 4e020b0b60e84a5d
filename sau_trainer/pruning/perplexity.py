"""Perplexity on a text set, used to compare pruners."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.qa import IGNORE_INDEX
from .calibration import _rows_from_tensor


def _scored_rows(data, tokenizer) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, labels)`` per sequence; labels are the ids, or -100 where a token is not scored."""
    def tok(texts, special):
        if tokenizer is None:
            raise ValueError("perplexity on texts needs a tokenizer: pass tokenizer=...")
        return [torch.as_tensor(i, dtype=torch.long) for i in tokenizer(texts, add_special_tokens=special)["input_ids"]]

    if isinstance(data, str):
        data = [data]
    if isinstance(data, torch.Tensor):
        return [(r, r) for r in _rows_from_tensor(data, None)]
    if isinstance(data, Mapping):
        if "input_ids" not in data:
            raise ValueError("a dict passed to perplexity needs 'input_ids' (and optionally 'attention_mask').")
        return [(r, r) for r in _rows_from_tensor(data["input_ids"], data.get("attention_mask"))]
    if not isinstance(data, Sequence) or not data:
        raise ValueError("perplexity needs texts, (context, continuation) pairs or token ids; got nothing usable.")
    if all(isinstance(t, str) for t in data):
        texts = [t for t in data if t.strip()]
        return [(r, r) for r in tok(texts, True)] if texts else []
    if all(isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in data):
        rows = []
        for ctx, cont in zip(tok([c for c, _ in data], True), tok([c for _, c in data], False), strict=True):
            rows.append((torch.cat([ctx, cont]), torch.cat([torch.full_like(ctx, IGNORE_INDEX), cont])))
        return rows
    if all(isinstance(t, Mapping) for t in data):
        rows = []
        for r in data:
            ids = torch.as_tensor(r["input_ids"], dtype=torch.long).reshape(-1)
            labels = torch.as_tensor(r.get("labels", ids), dtype=torch.long).reshape(-1)
            rows.append((ids, labels))
        return rows
    return [(r, r) for r in (torch.as_tensor(t, dtype=torch.long).reshape(-1) for t in data)]


@torch.no_grad()
def perplexity(
    model: nn.Module,
    texts_or_token_ids,
    tokenizer=None,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> float:
    """``exp`` of the mean next-token NLL over the scored tokens of the inputs.

    `texts_or_token_ids`: texts (with `tokenizer`; special tokens added); ``(context, continuation)``
    string pairs, scoring only the continuation (e.g. answers after their questions); a tensor of token
    ids (one row per sequence), a list of id lists, a dict with ``input_ids``/``attention_mask``; or
    dicts with ``input_ids`` and ``labels`` (-100 = not scored, the Hugging Face convention).
    Each sequence is cut into consecutive windows of `seq_len` tokens (default: the model's
    ``max_position_embeddings``, at most 2048); the first token of a window and padding are never scored.
    """
    rows = _scored_rows(texts_or_token_ids, tokenizer)
    if seq_len is None:
        seq_len = min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 2048)
    windows = [(i, t) for ids, labels in rows for i, t in zip(ids.split(seq_len), labels.split(seq_len), strict=True)
               if (t[1:] != IGNORE_INDEX).any()]
    if not windows:
        raise ValueError("perplexity found no token to score (sequences need two or more tokens).")
    windows.sort(key=lambda w: -w[0].numel())  # batch similar lengths together

    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device
    nll, count = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            group = windows[start : start + batch_size]
            length = max(w[0].numel() for w in group)
            ids = torch.zeros(len(group), length, dtype=torch.long)
            labels = torch.full((len(group), length), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros(len(group), length, dtype=torch.long)
            for r, (i, t) in enumerate(group):
                ids[r, : i.numel()], labels[r, : i.numel()], mask[r, : i.numel()] = i, t, 1
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            target = labels[:, 1:]
            for row_logits, row_target in zip(logits, target, strict=True):  # one fp32 row at a time (large vocabs)
                nll += float(F.cross_entropy(row_logits.float(), row_target, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((target != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return math.exp(nll / count)
