"""`SaliencyCallback`: the warm-up saliency pass before the first step, giving the trainer G and W."""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..objectives import forward_nll
from ..objectives.losses import mean_token_nll
from ..progress import log_metrics
from .masks import LazyMasks
from .saliency import compute_saliency
from .state import build_sau_state

logger = logging.getLogger("sau_trainer.callbacks")  # its name before the move: users and tests set its level


def console_logs(logs: dict) -> dict:
    """What the console shows of a `Trainer.log` call: per-matrix statistics (``sau/<statistic>/<matrix>``, one
    entry per matrix: 42 for a 6-layer model) are left to the logged metrics (``state.log_history``, the
    checkpoints' ``trainer_state.json``, the reporting integrations); their summary stays."""
    return {k: v for k, v in logs.items() if not (k.startswith("sau/") and k.count("/") >= 2)}


class _ConsolePrinter(PrinterCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):  # a log line, not a dict printed on stdout
        if state.is_local_process_zero:
            log_metrics(console_logs(logs or {}), state.global_step)


class _ConsoleProgress(ProgressCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=console_logs(logs or {}), **kwargs)


def quiet_console(trainer) -> None:
    """Make the trainer's console printer (`PrinterCallback` with ``disable_tqdm``, else `ProgressCallback`) skip
    per-matrix statistics, and with ``disable_tqdm`` log each line (`sau_trainer.progress.log_metrics`) instead
    of printing dicts on stdout; the instance is kept (its state included), only its class changes."""
    for cb in trainer.callback_handler.callbacks:
        if type(cb) is PrinterCallback:
            cb.__class__ = _ConsolePrinter
        elif type(cb) is ProgressCallback:
            cb.__class__ = _ConsoleProgress


class SaliencyCallback(TrainerCallback):
    """Runs the saliency pass over the forget set at train start (unless G and W were restored).

    `SAUTrainer` adds it by itself when ``args.sau`` is true. It uses the trainer's public side only: its
    arguments, model, saliency batches and targets, surviving masks, layouts, and its ``backend``
    (`sau_trainer.parallel.backend`: how gradients are read and reduced, which rows of a tensor this rank holds).
    """

    def __init__(self, trainer):  # an `SAUTrainer` (not imported here: the trainer imports this module)
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
        return self._pass(loss_fn, trainer.saliency_batches(shard=trainer.backend.shard_batches,
                                                            max_examples=args.saliency_max_examples),
                          show_progress=not args.disable_tqdm and args.process_index == 0)

    def _pass(self, loss_fn, batches, show_progress: bool) -> dict[str, torch.Tensor]:
        """One saliency pass, with the backend's gradient reader and backward (FSDP2: local shards of the reduced
        gradients, every rank passing every batch; DeepSpeed: its full gradients after the engine's backward)."""
        trainer, args = self.trainer, self.trainer.args
        backend = trainer.backend
        saliency = compute_saliency(
            trainer.model, batches, loss_fn, trainer.saliency_targets(), granularity=args.saliency_granularity,
            loss_scale=2.0**16 if args.fp16 else 1.0, autocast=trainer.autocast_smart_context_manager,
            show_progress=show_progress, sharded_grads=backend.read_grad, backward=backend.backward)
        backend.after_saliency()  # the first training micro-step starts a new gradient
        return saliency

    def retain_saliency(self) -> dict[str, torch.Tensor]:
        """Retain-aware saliency's second pass: the same estimate on the retain set's answer NLL, over as many
        retain examples as the forget pass used (the first ones, in order), so both are means over like counts."""
        trainer, args = self.trainer, self.trainer.args
        if trainer.retain_rows is None:
            raise ValueError("saliency_retain_aware=True needs a retain set: pass retain_dataset=... to SAUTrainer.")
        n_forget = len(trainer.train_dataset.rows)
        limit = n_forget if args.saliency_max_examples is None else min(n_forget, args.saliency_max_examples)
        return self._pass(lambda model, batch: mean_token_nll(*forward_nll(model, batch)[:2]),
                          trainer.saliency_batches(shard=trainer.backend.shard_batches, max_examples=limit,
                                                   rows=trainer.retain_rows), show_progress=False)

    def build_state(self):
        """``G`` and ``W`` from the forget saliency (and the retain saliency, if asked), by the one build
        (`sau.build_sau_state`) with the trainer's backend: under FSDP2 on local rows, the same as one process."""
        trainer, args = self.trainer, self.trainer.args
        backend = trainer.backend
        saliency = self.saliency()
        retain = self.retain_saliency() if args.saliency_retain_aware else None
        where = "cpu" if backend.sharded else None  # full masks stay on the CPU under FSDP2; the local rows move

        def surviving(n):
            dev = saliency[n].device
            return backend.local_rows(n, trainer.surviving_mask(n, where or dev)).to(dev)

        candidates = None
        if args.sau_moving_mask != "off":  # select among every entry of a prunable matrix (pruned ones start at 0)
            candidates = LazyMasks(saliency, lambda n: torch.ones(saliency[n].shape, dtype=torch.bool,
                                                                  device=saliency[n].device))
        return build_sau_state(
            saliency, LazyMasks(saliency, surviving), args.sau_topk, args.sau_alpha, args.sau_topk_scope,
            args.sau_redistribution, settings=args.sau_settings(),
            # model order (not the mask file's), and only what has a saliency (RMU: the trainable ones)
            global_names=[n for n in saliency if n in trainer.sparsity_masks], layouts=trainer.layouts,
            retain=retain, retain_eps=args.saliency_retain_eps, mass=args.sau_topk_mass, candidates=candidates,
            backend=backend,
        )

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
