"""Rows cut to a model's positions are counted and said, per split, once per call; training never passes them.

A tiny Llama with 40 positions, the built-in benchmark (prompts of 23-28 tokens, prompt + answer 33-48):
the counts in the log lines are checked against the rows that really were cut, counted here from the
tokenizer alone.
"""

import logging
import re

import pytest

from sau_trainer.data.qa import encode_prompt, tokenize_rows
from sau_trainer.modeling import build_llama

POSITIONS = 40
PART = re.compile(r"^(.+): (\d+) of (\d+) \(up to (\d+) [a-z ]+, (\d+) in all\)$")


def parsed(caplog, what: str) -> dict[str, tuple[int, int, int, int]]:
    """{split: (cut, of, most lost, total lost)} from the one log line that starts with `what`."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]
    assert len(lines) == 1, lines  # once per call, not per batch or per row
    parts = lines[0].split(f"cut to the maximum length {POSITIONS}: ", 1)[1].rstrip(".").split("; ")
    return {m[1]: tuple(int(x) for x in m.groups()[1:]) for m in map(PART.match, parts)}


def full_length(tokenizer, question: str, answer: str) -> int:
    return len(encode_prompt(tokenizer, question)) + len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1


@pytest.fixture(scope="module")
def short_model(tokenizer):
    return build_llama("tiny", tokenizer, max_position_embeddings=POSITIONS)


def expected(lengths: list[int], limit: int, floors: list[int] | None = None) -> tuple[int, int, int, int]:
    """Rows longer than `limit` lose the tokens past it, or past their `floors` (prompt lengths) when a prompt
    alone fills the limit: then every answer token is lost, and only those are counted."""
    floors = floors or [0] * len(lengths)
    lost = [n - max(limit, f) for n, f in zip(lengths, floors, strict=True) if n > limit]
    return len(lost), len(lengths), max(lost), sum(lost)


def test_training_rows_never_pass_the_positions_and_the_cut_is_counted(tokenizer, tiny_splits, short_model, caplog):
    rows = tiny_splits["full"]
    with caplog.at_level(logging.WARNING):
        encoded = tokenize_rows(rows, tokenizer, max_length=512, name="training set", model=short_model)
    assert max(len(e["input_ids"]) for e in encoded) == POSITIONS  # max_length 512 lowered to the model's 40
    lengths = [full_length(tokenizer, r["question"], r["answer"]) for r in rows]
    assert parsed(caplog, "Training set rows") == {"training set": expected(lengths, POSITIONS)}
    assert 0 < expected(lengths, POSITIONS)[0] < len(rows)  # the test cuts some rows, not all


def test_nothing_is_said_when_nothing_is_cut(tokenizer, tiny_splits, caplog):
    with caplog.at_level(logging.WARNING):
        tokenize_rows(tiny_splits["full"], tokenizer, max_length=512, name="training set",
                      model=build_llama("tiny", tokenizer, max_position_embeddings=256))
    assert not [r for r in caplog.records if "cut to the maximum length" in r.getMessage()]


def test_evaluation_counts_cut_pairs_and_short_generations_per_split(tokenizer, tiny_splits, short_model, caplog):
    from sau_trainer.evaluation import evaluate_tofu

    max_new = 16
    with caplog.at_level(logging.WARNING):
        evaluate_tofu(short_model, tokenizer, tiny_splits, forget_split="forget10", batch_size=1,
                      max_new_tokens=max_new, show_progress=False, membership_inference=False)
    splits = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
    pairs, pair_prompts, prompts = {}, {}, {}
    for split in splits:
        rows = tiny_splits[split]
        candidates = [(r["question"], a) for r in rows
                      for a in ([r["answer"], r["paraphrased_answer"]] if split in splits[:2] else [r["answer"]])
                      + list(r["perturbed_answer"])]
        pairs[split] = [full_length(tokenizer, q, a) for q, a in candidates]
        pair_prompts[split] = [len(encode_prompt(tokenizer, q)) for q, _ in candidates]
        prompts[split] = [len(encode_prompt(tokenizer, r["question"])) for r in rows]
    want_pairs = {s: expected(n, POSITIONS, pair_prompts[s]) for s, n in pairs.items() if max(n) > POSITIONS}
    assert want_pairs and parsed(caplog, "TOFU log-likelihoods") == want_pairs
    # one prompt per batch: each generation gets POSITIONS - its prompt length (at least 0), when below max_new
    want_gen = {}
    for split, lengths in prompts.items():
        short = [max_new - max(0, POSITIONS - n) for n in lengths if POSITIONS - n < max_new]
        if short:
            want_gen[split] = (len(short), len(lengths), max(short), sum(short))
    assert want_gen and parsed(caplog, "TOFU generation") == want_gen


def test_calibration_never_runs_past_the_positions_and_says_what_it_cut(tokenizer, tiny_splits, caplog):
    from sau_trainer.pruning import prune_model

    model = build_llama("tiny", tokenizer, max_position_embeddings=POSITIONS)
    rows = tiny_splits["full"]  # two rows per sample: 40 to 70 tokens, most longer than the positions
    texts = [f"{a['question']} {a['answer']} {b['question']} {b['answer']}" for a, b in zip(rows[::2], rows[1::2], strict=False)]
    with caplog.at_level(logging.INFO):
        result = prune_model(model, "wanda", 0.5, calibration=texts, tokenizer=tokenizer, num_samples=64,
                             seq_len=2048, progress=False)
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    assert any(f"seq_len 2048 is more than the model's {POSITIONS} positions" in r.getMessage()
               for r in caplog.records)
    lengths = [len(ids) for ids in tokenizer(texts[:64], add_special_tokens=True)["input_ids"]]
    assert parsed(caplog, "Calibration samples") == {"texts": expected(lengths, POSITIONS)}
