"""`SaliencyCallback`: the warm-up saliency pass before the first step, giving the trainer G and W."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .masks import LazyMasks
from .objectives import forward_nll
from .objectives.losses import mean_token_nll
from .saliency import compute_saliency
from .sau import build_sau_state, retain_aware_score

if TYPE_CHECKING:
    from .trainer import SAUTrainer

logger = logging.getLogger(__name__)


def console_logs(logs: dict) -> dict:
    """What the console shows of a `Trainer.log` call: per-matrix statistics (``sau/<statistic>/<matrix>``, one
    entry per matrix: 42 for a 6-layer model) are left to the logged metrics (``state.log_history``, the
    checkpoints' ``trainer_state.json``, the reporting integrations); their summary stays."""
    return {k: v for k, v in logs.items() if not (k.startswith("sau/") and k.count("/") >= 2)}


class _ConsolePrinter(PrinterCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=console_logs(logs or {}), **kwargs)


class _ConsoleProgress(ProgressCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=console_logs(logs or {}), **kwargs)


def quiet_console(trainer) -> None:
    """Make the trainer's console printer (`PrinterCallback` with ``disable_tqdm``, else `ProgressCallback`) skip
    per-matrix statistics; the instance is kept (its state included), only its class changes."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb) is PrinterCallback:
            cb.__class__ = _ConsolePrinter
        elif type(cb) is ProgressCallback:
            cb.__class__ = _ConsoleProgress


def _local_grad(p: torch.Tensor) -> torch.Tensor | None:
    """The local shard of a parameter's gradient (FSDP2), None before any backward reached it."""
    from .shards import local

    return None if p.grad is None else local(p.grad.detach())


def _full_grad(p: torch.Tensor) -> torch.Tensor | None:
    """The full gradient of a parameter under DeepSpeed ZeRO (reduced across ranks; gathered under ZeRO-3)."""
    from deepspeed.utils import safe_get_full_grad

    g = safe_get_full_grad(p)
    return None if g is None else g.detach()


class SaliencyCallback(TrainerCallback):
    """Runs the saliency pass over the forget set at train start (unless G and W were restored).

    `SAUTrainer` adds it by itself when ``args.sau`` is true.
    """

    def __init__(self, trainer: SAUTrainer):
        self.trainer = trainer
        quiet_console(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.sau_state is None:
            trainer.sau_state = self.build_state()
        self.log_stats()

    def saliency(self) -> dict[str, torch.Tensor]:
        """Per-matrix fp32 saliency over the forget set, as `SAUConfig` describes it."""
        trainer, args = self.trainer, self.trainer.args
        if args.saliency_loss == "objective":
            def loss_fn(model, batch):
                return trainer.objective.forget_term(model, batch, trainer.objective_ctx)[0]
        else:
            def loss_fn(model, batch):
                return mean_token_nll(*forward_nll(model, batch)[:2])
        sharded = bool(trainer._shards)  # FSDP2: every rank passes every batch; the backward reduces the gradients
        deepspeed = trainer._deepspeed_engine is not None  # the same, with the engine's backward and full gradients
        saliency = compute_saliency(
            trainer.model,
            trainer.saliency_batches(shard=not (sharded or deepspeed), max_examples=args.saliency_max_examples),
            loss_fn,
            trainer.saliency_targets(),
            granularity=args.saliency_granularity,
            loss_scale=2.0**16 if args.fp16 else 1.0,
            autocast=trainer.autocast_smart_context_manager,
            show_progress=not args.disable_tqdm and args.process_index == 0,
            sharded_grads=_local_grad if sharded else (_full_grad if deepspeed else None),
            backward=trainer._deepspeed_backward if deepspeed else None,
        )
        if deepspeed:  # the first training micro-step starts a new gradient (ZeRO accumulates after a backward)
            trainer._deepspeed_engine.optimizer.zero_grad(set_to_none=True)
        return saliency

    def retain_saliency(self) -> dict[str, torch.Tensor]:
        """Retain-aware saliency's second pass: the same estimate on the retain set's answer NLL, over as many
        retain examples as the forget pass used (the first ones, in order), so both are means over like counts."""
        trainer, args = self.trainer, self.trainer.args
        if trainer.retain_rows is None:
            raise ValueError("saliency_retain_aware=True needs a retain set: pass retain_dataset=... to SAUTrainer.")
        n_forget = len(trainer.train_dataset.rows)
        limit = n_forget if args.saliency_max_examples is None else min(n_forget, args.saliency_max_examples)
        return compute_saliency(
            trainer.model,
            trainer.saliency_batches(max_examples=limit, rows=trainer.retain_rows),
            lambda model, batch: mean_token_nll(*forward_nll(model, batch)[:2]),
            trainer.saliency_targets(),
            granularity=args.saliency_granularity,
            loss_scale=2.0**16 if args.fp16 else 1.0,
            autocast=trainer.autocast_smart_context_manager,
            show_progress=False,
        )

    def build_state(self):
        trainer, args = self.trainer, self.trainer.args
        if trainer._shards:
            return self.build_sharded_state()
        if trainer._deepspeed_engine is not None and args.saliency_retain_aware:
            raise ValueError("saliency_retain_aware is not supported under DeepSpeed yet: run it on one process or "
                             "with DDP.")
        saliency = self.saliency()
        score = None
        if args.saliency_retain_aware:
            retain = self.retain_saliency()
            score = {n: retain_aware_score(saliency[n], retain[n], args.saliency_retain_eps) for n in saliency}
        candidates = None
        if args.sau_moving_mask != "off":  # select among every entry of a prunable matrix (pruned ones start at 0)
            candidates = LazyMasks(saliency, lambda n: torch.ones(saliency[n].shape, dtype=torch.bool,
                                                                  device=saliency[n].device))
        return build_sau_state(
            saliency, LazyMasks(saliency, lambda n: trainer.surviving_mask(n, saliency[n].device)), args.sau_topk, args.sau_alpha, args.sau_topk_scope,
            args.sau_redistribution, settings=args.sau_settings(),
            # model order (not the mask file's), and only what has a saliency (RMU: the trainable ones)
            global_names=[n for n in saliency if n in trainer.sparsity_masks], layouts=trainer.layouts,
            score=score, mass=args.sau_topk_mass, candidates=candidates,
        )

    def build_sharded_state(self):
        """FSDP2: saliency on the local shards, ``G`` by a distributed threshold search, ``W`` from reduced sums
        (`sau_trainer.shards`); the full state on every rank."""
        from .shards import build_sharded_sau_state

        trainer, args = self.trainer, self.trainer.args
        options = {"saliency_retain_aware": getattr(args, "saliency_retain_aware", False),
                   "sau_topk_mass": getattr(args, "sau_topk_mass", None),
                   "sau_moving_mask": getattr(args, "sau_moving_mask", "off") != "off"}
        used = [k for k, v in options.items() if v]
        if used:
            raise ValueError(f"{', '.join(used)} is not supported under FSDP yet: run it on one process or with DDP.")
        saliency = self.saliency()
        shards = trainer._shards
        surviving = LazyMasks(saliency, lambda n: shards[n].local(trainer.surviving_mask(n, "cpu")).to(
            saliency[n].device))
        return build_sharded_sau_state(
            saliency, surviving, shards, args.sau_topk, args.sau_alpha, args.sau_topk_scope, args.sau_redistribution,
            settings=args.sau_settings(), global_names=[n for n in saliency if n in trainer.sparsity_masks],
            layouts=trainer.layouts)

    def log_stats(self) -> None:
        stats = self.trainer.sau_state.stats
        if not stats:
            return
        logs = {f"sau/selected_fraction/{n}": round(s["selected_fraction"], 6) for n, s in stats.items()}
        logs["sau/w_min"] = min(s["w_min"] for s in stats.values())
        logs["sau/w_max"] = max(s["w_max"] for s in stats.values())
        ratios = [s["pruned_over_selected"] for s in stats.values()]
        logs["sau/pruned_over_selected_mean"] = sum(ratios) / len(ratios)
        logger.info(
            "SAU: %d matrices, W in [%.4f, %.4f], mean I_P/I_G %.4f",
            len(stats), logs["sau/w_min"], logs["sau/w_max"], logs["sau/pruned_over_selected_mean"],
        )
        self.trainer.log(logs)
