"""Data: QA tokenisation (the prompt format), tokenizers for small models, benchmarks."""

from .qa import IGNORE_INDEX, PLAIN_PROMPT, QACollator, encode_prompt, encode_qa, encode_text, format_prompt, tokenize_rows

__all__ = [
    "IGNORE_INDEX",
    "PLAIN_PROMPT",
    "QACollator",
    "encode_prompt",
    "encode_qa",
    "encode_text",
    "format_prompt",
    "tokenize_rows",
]
