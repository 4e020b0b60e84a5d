"""Data: QA tokenisation (the prompt format), tokenizers for small models, the built-in benchmarks, TOFU and
MUSE loading, and the benchmark registry."""

from importlib import import_module
from typing import Any

# Public name -> module, imported on first use: `sau-trainer eval --help` lists the options without torch.
_EXPORTS = {
    "BENCHMARKS": "benchmarks",
    "IGNORE_INDEX": "qa",
    "MUSE_PRESETS": "synthetic_muse",
    "PLAIN_PROMPT": "qa",
    "PRESETS": "synthetic",
    "QACollator": "qa",
    "encode_prompt": "qa",
    "encode_qa": "qa",
    "encode_text": "qa",
    "format_prompt": "qa",
    "generate_benchmark": "synthetic",
    "generate_muse_benchmark": "synthetic_muse",
    "get_benchmark": "benchmarks",
    "load_benchmark": "benchmarks",
    "tokenize_rows": "qa",
    "write_benchmark": "synthetic",
    "write_muse_benchmark": "synthetic_muse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    try:  # a submodule not imported yet, e.g. `package.module.name` after `import package`
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
