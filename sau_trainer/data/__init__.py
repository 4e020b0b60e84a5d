"""Data: QA tokenisation (the prompt format), tokenizers for small models and the built-in benchmarks' generators.

Each benchmark's loading moved to its package under `sau_trainer.benchmarks` (issue 25); ``data.tofu``,
``data.muse``, ``data.wmdp`` and ``data.benchmarks`` (the registry) stay as re-exports of their old names. Nothing
here imports a benchmark's evaluation."""


from ..lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
