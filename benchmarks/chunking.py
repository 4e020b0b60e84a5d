"""Time of cutting a text benchmark's training text into chunks: tokenised once (`chunk_texts`) against the
decode-and-retokenise loop it replaced (open-unlearning's ``PretrainingDataset`` does the latter).

    python benchmarks/chunking.py                    # about 1M tokens, chunks of 512 and 2048, 3 repeats
    python benchmarks/chunking.py --tokens 200000    # quicker

The text is synthetic (the built-in MUSE-style profiles, shuffled and repeated until it holds `--tokens`
tokens of a byte-level BPE trained on them, 4,096 entries); the tokenizer is a fast (Rust) one, as every
tokenizer the pipeline loads is. Each time is the median of `--repeats` runs. "chunks changed" counts the
chunks whose tokens the old loop's re-tokenisation changed (at a chunk's edges a word cut in two is
tokenised differently), which the single tokenisation leaves exactly as in the text.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sau_trainer.data.muse import chunk_texts  # noqa: E402
from sau_trainer.data.qa import IGNORE_INDEX  # noqa: E402


def decode_and_retokenise(texts, tokenizer, max_length):
    """The replaced loop: each chunk of the joined text's tokens decoded and tokenised again, with BOS."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    rows = []
    for start in range(0, len(ids), max_length):
        enc = [tokenizer.bos_token_id] + tokenizer(tokenizer.decode(ids[start:start + max_length]),
                                                   add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": enc, "labels": [IGNORE_INDEX] + enc[1:], "attention_mask": [1] * len(enc)})
    return rows


def synthetic_text(n_tokens: int, seed: int = 0):
    from sau_trainer.data import generate_muse_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer

    bench = generate_muse_benchmark("tiny", seed)
    raw = [r["text"] for name, rows in bench.items() if name.startswith("raw/") for r in rows]
    tokenizer = train_tokenizer(raw, vocab_size=4096)
    sentences = [s for t in raw for s in t.split(". ") if s]
    rng = random.Random(seed)
    texts, count = [], 0
    while count < n_tokens:
        rng.shuffle(sentences)
        text = ". ".join(sentences[:200]) + "."
        texts.append(text)
        count += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    return texts, tokenizer


def median_time(fn, repeats: int, *args) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts, tokenizer = synthetic_text(args.tokens)
    n = len(tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"])
    print(f"{len(texts)} texts, {n:,} tokens (byte-level BPE, 4,096 entries), median of {args.repeats} runs")
    print("| chunk length | chunks | decode + retokenise (s) | tokenised once (s) | speed-up | chunks changed |")
    print("|---|---|---|---|---|---|")
    for length in args.lengths:
        t_old, old = median_time(decode_and_retokenise, args.repeats, texts, tokenizer, length)
        t_new, new = median_time(chunk_texts, args.repeats, texts, tokenizer, length)
        changed = sum(a["input_ids"] != b["input_ids"] for a, b in zip(old, new, strict=True))
        print(f"| {length} | {len(new):,} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.1f}x | {changed:,} |")


if __name__ == "__main__":
    main()
