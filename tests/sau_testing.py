"""Small helpers shared by the core tests (imported as a module; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager

import pytest
import torch
from transformers import TrainerCallback

from sau_trainer import SAUConfig, SAUTrainer
from sau_trainer.masks import prunable_parameters
from sau_trainer.modeling import build_llama

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
# Every optimizer the invariants hold for (bitsandbytes' skipped where it is not installed)
OPTIMIZERS = ["adamw_torch", "adamw_torch_fused", "sgd",
              pytest.param("adamw_bnb_8bit", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes")),
              pytest.param("paged_adamw_8bit", marks=pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes"))]


def sparse_model(tokenizer, sparsity=0.5, seed=0, state_dict=None, **kw):
    """A tiny random Llama with `sparsity` of each prunable matrix set to zero (seeded)."""
    model = build_llama("tiny", tokenizer, seed=seed, **kw)
    if state_dict is not None:
        model.load_state_dict(state_dict)
        return model
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in prunable_parameters(model).values():
            p.mul_((torch.rand(p.shape, generator=g) >= sparsity).float())
    return model


@contextmanager
def registries_restored():
    """Yield the objective registry; afterwards every registry (objectives, pruners, benchmarks) is as it was and
    any plugin module loaded meanwhile is forgotten (a later load of the same plugin would find its names taken)."""
    from sau_trainer.benchmarks.registry import BENCHMARKS
    from sau_trainer.objectives import OBJECTIVES
    from sau_trainer.pruning.registry import PRUNERS

    before = (dict(OBJECTIVES), set(PRUNERS), dict(BENCHMARKS), set(sys.modules))
    try:
        yield OBJECTIVES
    finally:
        for registry, saved in ((OBJECTIVES, before[0]), (BENCHMARKS, before[2])):
            registry.clear()
            registry.update(saved)
        for name in set(PRUNERS) - before[1]:  # PRUNERS builds its built-ins lazily: only take the new names off
            del PRUNERS[name]
        for name in set(sys.modules) - before[3]:
            if name.startswith("sau_trainer_plugin_"):
                del sys.modules[name]


def saliency_callback(trainer):
    """The trainer's `SaliencyCallback`."""
    from sau_trainer.callbacks import SaliencyCallback

    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, SaliencyCallback))


def qa(benchmark, split, n=None):
    rows = [{"question": r["question"], "answer": r["answer"]} for r in benchmark[split]]
    return rows[:n] if n else rows


def make_trainer(model, tokenizer, forget, retain, out, **kw):
    defaults = dict(output_dir=str(out), report_to=[], per_device_train_batch_size=4, learning_rate=1e-3,
                    max_steps=3, save_strategy="no", disable_tqdm=True, logging_steps=1, weight_decay=0.0,
                    max_grad_norm=1.0, seed=0, optim="adamw_torch", lr_scheduler_type="constant")
    defaults.update(kw)
    if defaults.get("bf16") and not torch.cuda.is_available():
        defaults["use_cpu"] = True  # Trainer's bf16 autocast on CPU
    callbacks = defaults.pop("callbacks", None)
    return SAUTrainer(model, SAUConfig(**defaults), forget_dataset=forget, retain_dataset=retain,
                      processing_class=tokenizer, callbacks=callbacks)


class OneProcess:
    """A stand-in for accelerate's PartialState with one process (`run_recipe(..., state=OneProcess())`)."""

    is_main_process = True
    num_processes = 1
    device = "cpu"

    def wait_for_everyone(self):
        pass


def ddp_worker_trainer(out_dir, **kw):
    """The trainer of a torchrun worker (2 CPU processes, gloo): a tiny 50%-sparse Llama, 12 forget and 24 retain
    rows of the tiny benchmark, 3 steps; `kw` are more SAUConfig fields. Returns ``(trainer, masks at the start)``."""
    from sau_trainer.data.synthetic import generate_benchmark
    from sau_trainer.data.tokenizer import train_tokenizer
    from sau_trainer.masks import SparsityMasks

    splits = generate_benchmark("tiny", 0)
    tok = train_tokenizer([r["question"] + " " + r["answer"] for r in splits["full"]], vocab_size=256)
    model = sparse_model(tok)
    masks = SparsityMasks.from_model(model)
    trainer = make_trainer(model, tok, qa(splits, "forget10", 12), qa(splits, "retain90", 24), out_dir,
                           use_cpu=True, max_steps=3, optim="adamw_torch", ddp_backend="gloo", **kw)
    return trainer, masks


def zeros_kept(model, masks) -> bool:
    """Every pruned entry of every prunable matrix is still exactly zero."""
    return all(bool((p.detach()[~masks.get(n)] == 0).all()) for n, p in prunable_parameters(model).items())


class GradRecorder(TrainerCallback):
    """Copies the gradients right before each optimizer step (after masking and clipping)."""

    def __init__(self, model, all_params=False):
        self.params = dict(model.named_parameters()) if all_params else prunable_parameters(model)
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.params.items() if p.grad is not None})
