"""Shared fixtures: tiny Llamas trained once per session on the built-in benchmark until memorised.

`memorized` is trained on the `tiny` preset's `full` split plus the two general-knowledge sets;
`trained_model(splits)` trains (and caches) a model on other splits with the same tokenizer and
recipe, e.g. the retain model. Trained models are cached on disk in pytest's cache directory,
keyed by a hash of the data, the settings, the library versions and the code that makes them,
so a re-run on an unchanged tree reuses them and any change retrains.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The test models are tiny: a second thread costs more in synchronisation than it gains (and on a busy
# 2-core machine two threads mostly wait on each other).
torch.set_num_threads(1)

PRESET, SEED = "tiny", 0
TARGET_SPLITS = ("full", "real_authors_perturbed", "world_facts_perturbed")
TRAIN_SETTINGS = dict(num_train_epochs=30, learning_rate=4e-3, per_device_train_batch_size=16,
                      lr_scheduler_type="cosine", warmup_steps=10, seed=0)
MODEL_SHAPE = "tiny"
VOCAB_SIZE = 512
_SOURCES = ("sau_trainer/data/qa.py", "sau_trainer/data/tokenizer.py", "sau_trainer/modeling.py",
            "sau_trainer/training/finetuning.py", "sau_trainer/data/synthetic.py", "tests/conftest.py")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainedModel:
    """A saved trained model: load a fresh copy per test with `load_model()`."""

    model_dir: Path
    tokenizer: object
    benchmark: dict
    splits: tuple
    rows: list = field(repr=False)

    @property
    def texts(self) -> list[str]:
        from sau_trainer.data.qa import format_prompt

        return [format_prompt(r["question"], self.tokenizer) + r["answer"] for r in self.rows]

    def load_model(self, **kwargs):
        from transformers import AutoModelForCausalLM

        kwargs.setdefault("dtype", torch.float32)
        return AutoModelForCausalLM.from_pretrained(self.model_dir, **kwargs)


def qa_rows(splits_data: dict, splits: tuple[str, ...]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for s in splits for r in splits_data[s]]


@pytest.fixture(autouse=True)
def _progress_bar_switch():
    """Each test starts with transformers' progress-bar switch as the session had it: a command run in-process
    turns bars off when stderr is not a terminal (`sau_trainer.progress.quiet_unless_terminal`), which must not
    leak into later tests."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    yield
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


@pytest.fixture(scope="session")
def tiny_splits() -> dict:
    from sau_trainer.data.synthetic import generate_benchmark

    return generate_benchmark(PRESET, SEED)


@pytest.fixture(scope="session")
def tokenizer(tiny_splits):
    """A byte-level BPE trained on every question and answer of the benchmark (all splits)."""
    from sau_trainer.data.tokenizer import train_tokenizer

    texts = []
    for rows in tiny_splits.values():
        for r in rows:
            texts += [r["question"], r["answer"], *r.get("perturbed_answer", []), r.get("paraphrased_answer", ""),
                      r.get("paraphrased_question", "")]
    return train_tokenizer([t for t in texts if t], vocab_size=VOCAB_SIZE)


def _cache_key(benchmark: dict, splits: tuple) -> str:
    import transformers

    h = hashlib.sha256()
    h.update(json.dumps([benchmark[s] for s in splits], sort_keys=True).encode())
    h.update(json.dumps([TRAIN_SETTINGS, MODEL_SHAPE, VOCAB_SIZE, splits, torch.__version__,
                         transformers.__version__]).encode())
    for src in _SOURCES:
        h.update((ROOT / src).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_model(request, tiny_splits, tokenizer, tmp_path_factory):
    """Factory: `trained_model(splits)` -> a `TrainedModel` trained on those splits until memorised."""
    made: dict[tuple, TrainedModel] = {}
    # without pytest's cache plugin (`-p no:cacheprovider`) there is no `config.cache`: train, cache nothing
    cache = getattr(request.config, "cache", None)
    cache_root = Path(cache.mkdir("sau-trained-models")) if cache is not None else None

    def make(splits: tuple[str, ...] = TARGET_SPLITS) -> TrainedModel:
        splits = tuple(splits)
        if splits in made:
            return made[splits]
        from sau_trainer.finetuning import finetune
        from sau_trainer.modeling import build_llama

        rows = qa_rows(tiny_splits, splits)
        key = _cache_key(tiny_splits, splits)
        cached = cache_root / key if cache_root else None
        model_dir = tmp_path_factory.mktemp("trained-" + "-".join(splits)[:40])
        if cached is not None and (cached / "config.json").is_file():
            shutil.copytree(cached, model_dir, dirs_exist_ok=True)
        else:
            model = build_llama(MODEL_SHAPE, tokenizer, seed=TRAIN_SETTINGS["seed"])
            finetune(model, tokenizer, rows, str(model_dir), disable_tqdm=True, logging_steps=1000,
                     **TRAIN_SETTINGS)
            tokenizer.save_pretrained(model_dir)
            if cached is not None and not cached.exists():  # copy, then rename: never a half-written cache entry
                staging = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
                shutil.copytree(model_dir, staging, dirs_exist_ok=True)
                try:
                    staging.rename(cached)
                except OSError:  # another session stored it first
                    shutil.rmtree(staging, ignore_errors=True)
        made[splits] = TrainedModel(model_dir, tokenizer, tiny_splits, splits, rows)
        return made[splits]

    return make


@pytest.fixture(scope="session")
def memorized(trained_model) -> TrainedModel:
    """The target model: trained on `full` + the general-knowledge sets until it memorised them."""
    return trained_model(TARGET_SPLITS)

