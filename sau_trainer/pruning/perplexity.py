"""Perplexity on a text set, used to compare pruners."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import _rows_from_tensor, make_batches


@torch.no_grad()
def perplexity(
    model: nn.Module,
    texts_or_token_ids,
    tokenizer=None,
    seq_len: int | None = None,
    batch_size: int = 8,
) -> float:
    """``exp`` of the mean next-token NLL over every real token of the inputs.

    `texts_or_token_ids`: a list of texts (with `tokenizer`, special tokens added), a tensor of token
    ids (one row per sequence), a list of id lists, or a dict with ``input_ids``/``attention_mask``.
    Each sequence is cut into consecutive windows of `seq_len` tokens (default: the model's
    ``max_position_embeddings``, at most 2048); padding is never scored.
    """
    data = texts_or_token_ids
    if isinstance(data, str):
        data = [data]
    if isinstance(data, torch.Tensor):
        rows = _rows_from_tensor(data, None)
    elif isinstance(data, Mapping):
        rows = _rows_from_tensor(data["input_ids"], data.get("attention_mask"))
    elif isinstance(data, Sequence) and data and all(isinstance(t, str) for t in data):
        if tokenizer is None:
            raise ValueError("perplexity on texts needs a tokenizer: pass tokenizer=...")
        texts = [t for t in data if t.strip()]
        rows = [torch.as_tensor(ids, dtype=torch.long) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []
    elif isinstance(data, Sequence):
        rows = [torch.as_tensor(t, dtype=torch.long).reshape(-1) for t in data]
    else:
        raise ValueError(f"perplexity does not accept {type(data).__name__}; pass texts or token ids.")
    if seq_len is None:
        seq_len = min(int(getattr(model.config, "max_position_embeddings", 2048) or 2048), 2048)
    windows = [w for r in rows for w in r.split(seq_len) if w.numel() >= 2]
    if not windows:
        raise ValueError("perplexity needs at least one sequence of two or more tokens.")

    was_training = model.training
    model.eval()
    device = model.get_input_embeddings().weight.device
    nll, count = 0.0, 0
    try:
        for ids, mask in make_batches(windows, batch_size):
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                         ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    finally:
        model.train(was_training)
    return math.exp(nll / count)
