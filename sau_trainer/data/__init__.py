"""Data: QA tokenisation (the prompt format), tokenizers for small models, the built-in benchmark, TOFU loading."""

from .qa import (
    IGNORE_INDEX,
    PLAIN_PROMPT,
    QACollator,
    encode_prompt,
    encode_qa,
    encode_text,
    format_prompt,
    tokenize_rows,
)
from .synthetic import PRESETS, generate_benchmark, write_benchmark
from .tofu import BENCHMARKS, load_benchmark

__all__ = [
    "BENCHMARKS",
    "IGNORE_INDEX",
    "PLAIN_PROMPT",
    "PRESETS",
    "QACollator",
    "encode_prompt",
    "encode_qa",
    "encode_text",
    "format_prompt",
    "generate_benchmark",
    "load_benchmark",
    "tokenize_rows",
    "write_benchmark",
]
