"""Greedy generation for the evaluators: batched, left-padded, within the model's maximum length.

Open-unlearning's post-processing: the new tokens only are decoded (special tokens skipped) after
cutting at the first EOS, then cut at the first occurrence of each stop string, then stripped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..progress import show_progress as show_bar

logger = logging.getLogger(__name__)


def cut_at_stop_strings(text: str, stop_strings: Sequence[str] = ()) -> str:
    """`text` up to the first occurrence of any stop string, stripped."""
    for stop in stop_strings:
        pos = text.find(stop)
        if pos != -1:
            text = text[:pos]
    return text.strip()


@torch.no_grad()
def generate_from_ids(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      batch_size: int = 16, max_length: int | None = None, stop_strings: Sequence[str] = (),
                      show_progress: bool = True, desc: str = "generation",
                      labels: Sequence[str] | None = None) -> list[str]:
    """Greedy continuations of token-id `prompts` (plain greedy decoding, every sampling field set
    explicitly so a model's shipped generation config cannot change the result). A prompt as long as
    `max_length` gets ''. Prompts that get fewer than `max_new_tokens` new tokens (prompt and generation
    must fit `max_length`) are logged in one line, per label of `labels` (one per prompt, e.g. its split)."""
    from transformers import GenerationConfig

    from ..data.qa import QACollator
    from ..data.truncation import TruncationCount

    outputs = [""] * len(prompts)
    usable = [i for i, p in enumerate(prompts) if max_length is None or len(p) < max_length]
    if len(usable) < len(prompts):
        logger.warning("%d prompts are as long as the model's maximum length (%s); their generations are empty.",
                       len(prompts) - len(usable), max_length)
    order = sorted(usable, key=lambda i: len(prompts[i]))
    if max_length is not None:  # each batch generates up to max_length - its (left-padded) width
        cut = TruncationCount(f"{desc}: generations of up to {max_new_tokens} new tokens", max_length,
                              unit="fewer new tokens")
        budget = {i: 0 for i in range(len(prompts))}
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            budget.update((i, max(0, min(max_new_tokens, max_length - width))) for i in idx)
        for i in range(len(prompts)):
            cut.add(labels[i] if labels is not None else "all", max_new_tokens - budget[i])
        cut.log(logger)
    collate = QACollator(tokenizer, padding_side="left")
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_bar(show_progress)):
            idx = order[start : start + batch_size]
            batch = collate([{"input_ids": list(prompts[i]), "attention_mask": [1] * len(prompts[i])} for i in idx])
            width = batch["input_ids"].shape[1]
            budget = max_new_tokens if max_length is None else min(max_new_tokens, max_length - width)
            if budget <= 0:
                continue
            config = GenerationConfig(max_new_tokens=budget, min_new_tokens=0, do_sample=False, num_beams=1,
                                      repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
                                      bad_words_ids=None, pad_token_id=collate.pad_token_id, eos_token_id=eos)
            out = model.generate(input_ids=batch["input_ids"].to(device),
                                 attention_mask=batch["attention_mask"].to(device), generation_config=config)
            for j, i in enumerate(idx):
                new = out[j, width:].tolist()
                if eos is not None and eos in new:
                    new = new[: new.index(eos)]
                outputs[i] = cut_at_stop_strings(tokenizer.decode(new, skip_special_tokens=True), stop_strings)
    finally:
        model.train(was_training)
    return outputs
