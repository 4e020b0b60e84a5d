"""Data: QA tokenisation (the prompt format), tokenizers for small models, the built-in benchmarks, TOFU and
MUSE loading, and the benchmark registry."""

from .benchmarks import BENCHMARKS, get_benchmark, load_benchmark
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
from .synthetic_muse import MUSE_PRESETS, generate_muse_benchmark, write_muse_benchmark

__all__ = [
    "BENCHMARKS",
    "IGNORE_INDEX",
    "MUSE_PRESETS",
    "PLAIN_PROMPT",
    "PRESETS",
    "QACollator",
    "encode_prompt",
    "encode_qa",
    "encode_text",
    "format_prompt",
    "generate_benchmark",
    "generate_muse_benchmark",
    "get_benchmark",
    "load_benchmark",
    "tokenize_rows",
    "write_benchmark",
    "write_muse_benchmark",
]
