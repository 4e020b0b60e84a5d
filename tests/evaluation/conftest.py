"""Tiny Llamas trained on ``synthetic-muse`` once per session (cached on disk like tests/conftest.py's):
the target on raw/forget + raw/retain1 + raw/retain2, the retain model on raw/retain1 + raw/retain2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

MUSE_TRAIN_SETTINGS = dict(num_train_epochs=60, learning_rate=3e-3, per_device_train_batch_size=8,
                           lr_scheduler_type="cosine", warmup_steps=10, seed=0)
MUSE_VOCAB_SIZE = 512
_MUSE_SOURCES = ("sau_trainer/data/qa.py", "sau_trainer/data/tokenizer.py", "sau_trainer/modeling.py",
                 "sau_trainer/training/finetuning.py", "sau_trainer/data/synthetic.py", "sau_trainer/data/synthetic_muse.py",
                 "tests/evaluation/conftest.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def muse_splits() -> dict:
    from sau_trainer.data import generate_muse_benchmark

    return generate_muse_benchmark("tiny", 0)


@pytest.fixture(scope="session")
def muse_tokenizer(muse_splits):
    from sau_trainer.data import get_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer

    return train_tokenizer(get_benchmark("synthetic-muse").tokenizer_texts(muse_splits), vocab_size=MUSE_VOCAB_SIZE)


def _key(rows: list, texts: list, role: str) -> str:
    """The training rows and tokenizer texts themselves (not the registry's code), settings, versions, code."""
    import transformers

    h = hashlib.sha256()
    h.update(json.dumps([rows, texts, role, MUSE_TRAIN_SETTINGS, MUSE_VOCAB_SIZE, torch.__version__,
                         transformers.__version__], sort_keys=True).encode())
    for src in _MUSE_SOURCES:
        h.update((ROOT / src).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def muse_models(request, muse_splits, muse_tokenizer, tmp_path_factory) -> dict:
    """``{"target": dir, "retain": dir}``: saved models (with the tokenizer) trained until they memorised."""
    from sau_trainer.data import get_benchmark
    from sau_trainer.finetuning import finetune
    from sau_trainer.modeling import build_llama

    bench = get_benchmark("synthetic-muse")
    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    cache_root = Path(cache.mkdir("sau-trained-muse")) if cache is not None else None
    out = {}
    for role in ("target", "retain"):
        model_dir = tmp_path_factory.mktemp(f"muse-{role}")
        rows = bench.training_rows(muse_splits, bench.train_splits(role))
        key = _key(rows, bench.tokenizer_texts(muse_splits), role)
        cached = cache_root / key if cache_root else None
        if cached is not None and (cached / "config.json").is_file():
            shutil.copytree(cached, model_dir, dirs_exist_ok=True)
        else:
            model = build_llama("tiny", muse_tokenizer, seed=0)
            finetune(model, muse_tokenizer, rows, str(model_dir), disable_tqdm=True, logging_steps=1000,
                     **MUSE_TRAIN_SETTINGS)
            muse_tokenizer.save_pretrained(model_dir)
            if cached is not None and not cached.exists():  # copy, then rename: never a half-written entry
                staging = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
                shutil.copytree(model_dir, staging, dirs_exist_ok=True)
                try:
                    staging.rename(cached)
                except OSError:
                    shutil.rmtree(staging, ignore_errors=True)
        out[role] = model_dir
    return out
