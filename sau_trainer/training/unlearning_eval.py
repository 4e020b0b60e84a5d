"""`UnlearningEvaluationCallback`: the benchmark's metrics during unlearning, a trajectory, and the best model.

Why. One unlearning run is a path through the forget/utility plane, not one point: SPEC section 7 compares
methods on frontiers built from every evaluation of every run (`sau_trainer.pipeline.frontier`), and a user who
unlearns wants the weights of the best point along the path (the most forgetting while utility stays above a
floor), not the last one. open-unlearning's users ask for the same (per-epoch evaluation with best-checkpoint
selection, and evaluation under several GPUs).

What it does, as a `transformers.TrainerCallback` (works with `SAUTrainer` and with any Trainer wrapped by
`sparsity_preserving`, or a plain Trainer):

- **When.** Before the first step (step 0: the starting model, which every frontier needs), every `eval_steps`
  optimizer steps (an int, or a float in (0, 1): that fraction of the run's steps, rounded up, as
  `TrainingArguments.eval_steps`), and after the last step. Steps are optimizer steps (``state.global_step``), so
  gradient accumulation changes nothing. If training stops early, the last step is evaluated at train end.
- **How.** ``evaluate(model) -> {metric: number}`` (e.g. a closure over `evaluate_tofu`; a result with a
  ``"summary"`` mapping is read from its summary; entries that are not numbers, such as a ``forget_quality`` of
  None, are left out with one warning) runs with the model in eval mode under ``torch.no_grad``; the model is put
  back in train mode after, and the Python, NumPy, torch and CUDA random states are restored, so the training
  that follows is the same as without the callback. The metrics then go through the Trainer's own logging, as
  `Trainer.evaluate` does: ``trainer.log({"eval_<metric>": ..., "eval_runtime": ...})`` (``state.log_history``,
  the console and every ``report_to`` logger) and ``on_evaluate`` of every callback (e.g. `EarlyStoppingCallback`
  with ``metric_for_best_model="eval_forget_quality"``).
- **Trajectory.** ``callback.trajectory`` is ``[{"step": 0, <metric>: value, ...}, ...]`` (what report rows carry
  as ``trajectory``). It is also kept in ``state.stateful_callbacks["sau_trainer.UnlearningEvaluation"]``, which
  every checkpoint's ``trainer_state.json`` holds: on resume the callback reads it back (the entry is not a class
  name, so `restore_callback_states_from_checkpoint` does not try to rebuild the callback from JSON, which it could
  not: the evaluation function is not JSON; with that option on, transformers logs that it ignores the entry). A resumed run's trajectory equals the uninterrupted one's.
- **Best model.** With ``best="<metric>"`` (``mode`` ``"max"`` or ``"min"``) the best evaluation is the one with
  the best value among those whose ``utility`` metric is at or above the floor: ``utility_floor`` (absolute) or
  ``utility_fraction`` x the step-0 utility (the starting model's), or no floor. Ties keep the earliest. Step 0 is
  a candidate (if nothing beats the start, the start is the answer). Its weights are copied to CPU memory (every
  parameter and buffer; under FSDP2 each rank's local shards, without a gather) and loaded at train end when
  ``load_best_model_at_end`` (default True); sparsity stays exact (the copies were taken after the re-zero, and the
  masks of ``sau_moving_mask`` are restored with them; pruned entries are then set to +0.0 again). A checkpoint
  saved while the best is an earlier step gets ``unlearning_best.pt`` (under FSDP2: ``unlearning_best.rank<r>.pt``)
  so a resumed run can still load it; if the best is the checkpoint's own step, its weights are the model's. If no
  evaluation reaches the floor, the final weights are kept and a warning says so. ``callback.best`` describes the
  choice. Not under DeepSpeed ZeRO (refused at train start when ``best`` is set).
- **Several processes (DDP, FSDP2).** Every rank evaluates, on the same data (under FSDP2 the forward passes need
  every rank anyway; under DDP no rank waits idle on a collective for the length of an evaluation), then rank 0's
  metrics are broadcast, so every rank logs, records and chooses the same. `evaluate` must run the same forward
  passes on every rank (true of `evaluate_tofu`: greedy decoding on identical weights) and must not use collectives
  of its own that some rank skips.

Cost (``python benchmarks/eval_cost.py``: the demo's model, a 2-layer Llama with d=128, 50% magnitude, the demo
preset's forget10 of 40 questions, NPO with batch 8, one CPU thread; two runs on a shared, busy 2-core machine): one
training step took 0.08-0.11 s; one `evaluate_tofu` evaluation of all four sets (about 1,900 teacher-forced pairs,
batch 64, which dominate) 1.1-1.9 s without generation or with 16 new tokens, and 1.5-3.2 s with the demo's 48: 14x
to 28x a step. A demo run (15 steps) evaluated at step 0 and every step (every fifth of an epoch) spends 18-51 s
evaluating against about 1.5 s of training. Without generation `evaluate_tofu`'s ``model_utility`` is 0 (its ROUGE
terms need answers), so a trajectory for a utility floor needs some generation; cheaper points come from fewer rows
(e.g. the first rows of each split) or fewer evaluations, with the final point evaluated in full by the pipeline's
evaluate stage, and the report saying which.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .eval_state import (
    agree,
    load_snapshot,
    model_is_sharded,
    numeric_metrics,
    reshard,
    rng_state,
    set_rng_state,
    snapshot,
    world,
)

logger = logging.getLogger("sau_trainer.unlearning_eval")  # its name before the move: users and tests set its level

STATE_KEY = "sau_trainer.UnlearningEvaluation"  # in TrainerState.stateful_callbacks (saved in trainer_state.json)
BEST_FILE = "unlearning_best.pt"
MODES = ("max", "min")



class UnlearningEvaluationCallback(TrainerCallback):
    """Evaluates the benchmark's metrics every `eval_steps` optimizer steps (and at step 0 and at the end), logs
    them through the Trainer, keeps the trajectory, and optionally loads the best evaluation's weights at the end.

    Args:
        evaluate: ``evaluate(model) -> {metric: number}``, e.g. ``lambda m: evaluate_tofu(m, tok, splits,
            retain_results=ref, max_new_tokens=0, show_progress=False)`` (a result's ``summary`` is read).
        eval_steps: evaluate every this many optimizer steps (an int >= 1), or a float in (0, 1): that fraction
            of the run's steps.
        best: the metric that picks the best evaluation (None: no best model).
        mode: ``"max"`` (higher is better, e.g. forget quality) or ``"min"`` (e.g. forget ROUGE).
        utility: the utility metric the floor applies to.
        utility_floor: the floor as an absolute utility (at most one of this and ``utility_fraction``).
        utility_fraction: the floor as a fraction of the step-0 utility.
        load_best_model_at_end: load the best evaluation's weights when training ends (with `best`).
        metric_key_prefix: logged names are ``<prefix>_<metric>``.

    Attach it with ``trainer.add_callback(cb)``, ``callbacks=[cb]`` or ``cb.attach(trainer)``; the callback finds
    its Trainer when training starts.
    """

    def __init__(self, evaluate: Callable[[torch.nn.Module], Mapping], eval_steps: int | float, *,
                 best: str | None = None, mode: str = "max", utility: str = "model_utility",
                 utility_floor: float | None = None, utility_fraction: float | None = None,
                 load_best_model_at_end: bool = True, metric_key_prefix: str = "eval"):
        if not callable(evaluate):
            raise TypeError(f"evaluate must be a function model -> dict of metrics, got {type(evaluate).__name__}.")
        if isinstance(eval_steps, bool) or not isinstance(eval_steps, (int, float)) or not (
                (isinstance(eval_steps, int) and eval_steps >= 1) or 0 < eval_steps < 1):
            raise ValueError(f"eval_steps must be an int >= 1 (optimizer steps) or a float in (0, 1) (a fraction of "
                             f"the run's steps); got {eval_steps!r}.")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if utility_floor is not None and utility_fraction is not None:
            raise ValueError("Give utility_floor (absolute) or utility_fraction (of the starting utility), not both.")
        for name, v in (("utility_floor", utility_floor), ("utility_fraction", utility_fraction)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}.")
        if best is None and (utility_floor is not None or utility_fraction is not None):
            raise ValueError("A utility floor only selects the best model: set best='<metric>' as well.")
        self.evaluate = evaluate
        self.eval_steps = eval_steps
        self.best_metric, self.mode, self.utility = best, mode, utility
        self.utility_floor, self.utility_fraction = utility_floor, utility_fraction
        self.load_best_model_at_end = load_best_model_at_end
        self.prefix = metric_key_prefix
        self.trajectory: list[dict[str, float]] = []
        self.eval_seconds: list[float] = []
        self.best: dict | None = None  # {"step", "metric", "value", "utility", "floor", "loaded"}
        self._trainer = None
        self._every = None
        self._weights: dict[str, torch.Tensor] | None = None  # the best evaluation's weights (CPU)
        self._masks: dict[str, torch.Tensor] | None = None  # and its masks, under sau_moving_mask
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ finding the trainer
    def attach(self, trainer) -> UnlearningEvaluationCallback:
        """Add this callback to `trainer` (returns the callback)."""
        self._trainer = trainer
        trainer.add_callback(self)
        return self

    def _find_trainer(self):
        """The Trainer whose callback handler holds this callback: the caller of the event, up the stack."""
        if self._trainer is not None and self in self._trainer.callback_handler.callbacks:
            return self._trainer
        frame = sys._getframe(1)
        while frame is not None:
            obj = frame.f_locals.get("self")
            if isinstance(obj, Trainer) and self in obj.callback_handler.callbacks:
                self._trainer = obj
                return obj
            frame = frame.f_back
        raise RuntimeError("UnlearningEvaluationCallback could not find its Trainer: add it with "
                           "trainer.add_callback(cb), callbacks=[cb] or cb.attach(trainer).")

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._find_trainer()
        if self.best_metric is not None and self.load_best_model_at_end:
            if getattr(trainer, "is_deepspeed_enabled", False):
                raise ValueError("UnlearningEvaluationCallback(best=...) cannot load the best model under DeepSpeed "
                                 "ZeRO: pass load_best_model_at_end=False, or train with FSDP2, DDP or one process.")
            if args.load_best_model_at_end:
                raise ValueError("Both TrainingArguments.load_best_model_at_end and UnlearningEvaluationCallback(best="
                                 "...) would load a best model: turn one of them off.")
        self._every = self.eval_steps if isinstance(self.eval_steps, int) else max(
            1, math.ceil(self.eval_steps * state.max_steps))
        self.trajectory, self.eval_seconds, self.best = [], [], None
        self._weights = self._masks = None
        stored = state.stateful_callbacks.get(STATE_KEY) if isinstance(state.stateful_callbacks, dict) else None
        if state.global_step > 0 and stored:
            self._restore(stored, args, state, trainer)
        elif state.global_step > 0:
            logger.warning("The checkpoint has no evaluation trajectory (it was saved without "
                           "UnlearningEvaluationCallback): the trajectory starts at the resumed step %d%s.",
                           state.global_step, ", and utility_fraction is read from it, not from the starting model"
                           if self.utility_fraction is not None else "")
            self._evaluate(trainer, args, state)
        else:
            self._evaluate(trainer, args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self._every == 0 or state.global_step >= state.max_steps:
            self._evaluate(self._find_trainer(), args, state)

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self._find_trainer()
        self._evaluate(trainer, args, state)  # stopped early: the last step; else a no-op
        if self.best_metric is None:
            return
        if self.best is None:
            logger.warning("No evaluation had %s >= the floor %s: the final weights are kept (no best model).",
                           self.utility, self._floor())
        elif self.load_best_model_at_end:
            if self._weights is None:
                logger.warning("The best evaluation (step %d) came before the resumed checkpoint and its weights were "
                               "not found there (%s): the final weights are kept.", self.best["step"], BEST_FILE)
            elif self.best["step"] != state.global_step:
                self._load_best(trainer)
            self.best["loaded"] = self._weights is not None
            logger.info("Best evaluation: step %d, %s=%.6g, %s=%s (floor %s)%s.", self.best["step"],
                        self.best_metric, self.best["value"], self.utility, self.best["utility"], self.best["floor"],
                        "; its weights are loaded" if self.best["loaded"] else "")
        self._store(state)

    def on_save(self, args, state, control, **kwargs):
        """A checkpoint was written: add the best weights to it if they are not its own."""
        if self.best is None or self._weights is None or self.best["step"] == state.global_step:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        name = self._best_file_name()
        if name is None or not os.path.isdir(folder):
            return
        torch.save({"step": self.best["step"], "weights": self._weights, "masks": self._masks},
                   os.path.join(folder, name))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, trainer, args, state) -> None:
        step = state.global_step
        if self.trajectory and self.trajectory[-1]["step"] == step:
            return
        model = trainer.model
        was_training = model.training
        rng = rng_state()
        start = time.perf_counter()
        model.eval()
        try:
            with torch.no_grad():
                raw = self.evaluate(model)
        finally:
            reshard(model)
            model.train(was_training)
            set_rng_state(rng)
        seconds = time.perf_counter() - start
        metrics, dropped = numeric_metrics(raw)
        metrics = agree(metrics)
        new = [k for k in dropped if k not in self._warned]
        if new:
            self._warned.update(new)
            logger.warning("Evaluation results that are not numbers are left out of the trajectory: %s.",
                           ", ".join(new))
        self._check_names(metrics)
        self.trajectory.append({"step": step, **metrics})
        self.eval_seconds.append(seconds)
        self._update_best(trainer, step, metrics)
        self._store(state)
        logs = {f"{self.prefix}_{k}": v for k, v in metrics.items()}
        logs[f"{self.prefix}_runtime"] = round(seconds, 4)
        # the handler's on_log / on_evaluate clear should_log / should_evaluate, which the Trainer's own flow set
        # for this step (its training-loss log, its own evaluation): kept as they were
        control = trainer.control
        flags = (control.should_log, control.should_evaluate)
        trainer.log(dict(logs))
        trainer.control = trainer.callback_handler.on_evaluate(args, state, trainer.control, metrics=logs)
        trainer.control.should_log, trainer.control.should_evaluate = flags

    def _check_names(self, metrics: Mapping[str, float]) -> None:
        wanted = [self.best_metric] if self.best_metric else []
        if self.utility_floor is not None or self.utility_fraction is not None:
            wanted.append(self.utility)
        missing = [k for k in wanted if k not in metrics]
        if missing:
            raise ValueError(f"UnlearningEvaluationCallback: the evaluation has no numeric {missing[0]!r} (it has "
                             f"{sorted(metrics)}); forget_quality needs the retain model's results "
                             "(evaluate_tofu(..., retain_results=...)).")

    def _floor(self) -> float | None:
        if self.utility_floor is not None:
            return float(self.utility_floor)
        if self.utility_fraction is not None and self.trajectory:
            return self.utility_fraction * self.trajectory[0][self.utility]
        return None

    def _update_best(self, trainer, step: int, metrics: Mapping[str, float]) -> None:
        if self.best_metric is None:
            return
        value, util, floor = metrics[self.best_metric], metrics.get(self.utility), self._floor()
        if len(self.trajectory) == 1 and self.utility_fraction is not None and not self.trajectory[0][self.utility] > 0:
            logger.warning("The starting model's %s is %s, so utility_fraction=%s makes no floor (evaluate_tofu's "
                           "model_utility, a harmonic mean, is 0 when one term is, e.g. ROUGE without generation: "
                           "max_new_tokens=0).",
                           self.utility, self.trajectory[0][self.utility], self.utility_fraction)
        if not math.isfinite(value) or (floor is not None and not (util is not None and util >= floor)):
            return
        if self.best is not None and not (value > self.best["value"] if self.mode == "max"
                                          else value < self.best["value"]):
            return
        self.best = {"step": step, "metric": self.best_metric, "value": value, "utility": util, "floor": floor,
                     "loaded": False}
        if self.load_best_model_at_end:
            self._weights = snapshot(trainer.model, self._weights)
            moving = getattr(trainer, "moving_mask", None)
            masks = getattr(trainer, "sparsity_masks", None)
            self._masks = ({n: masks.get(n, "cpu").clone() for n in masks.names}
                           if moving is not None and masks is not None else None)

    @torch.no_grad()
    def _load_best(self, trainer) -> None:
        load_snapshot(trainer.model, self._weights)
        if self._masks is not None:
            for name, mask in self._masks.items():
                trainer.sparsity_masks.replace(name, mask)  # kept on the device the masks are on
        if hasattr(trainer, "rezero_pruned_entries"):  # not inside DeepSpeed's engine (its optimizer keeps zeros)
            trainer.rezero_pruned_entries()  # a no-op on weights saved after the re-zero: exactness does not rely on it

    # ------------------------------------------------------------------ state and resume
    def _store(self, state) -> None:
        if not isinstance(state.stateful_callbacks, dict):
            state.stateful_callbacks = {}
        state.stateful_callbacks[STATE_KEY] = {"trajectory": [dict(e) for e in self.trajectory],
                                               "best": dict(self.best) if self.best else None,
                                               "eval_seconds": list(self.eval_seconds)}

    def _best_file_name(self) -> str | None:
        """This rank's file of best weights: every rank's under FSDP2 (local shards), else rank 0's only."""
        rank, _ = world()
        if model_is_sharded(self._trainer.model):
            return f"unlearning_best.rank{rank}.pt"
        return BEST_FILE if rank == 0 else None

    def _restore(self, stored: Mapping, args, state, trainer) -> None:
        self.trajectory = [dict(e) for e in stored.get("trajectory", [])]
        self.eval_seconds = list(stored.get("eval_seconds", []))
        self.best = dict(stored["best"]) if stored.get("best") else None
        if self.best is not None and self.best.get("metric") != self.best_metric:
            logger.warning("The checkpoint's best evaluation was chosen by %s, this run by %s: chosen again from the "
                           "evaluations after the resume.", self.best.get("metric"), self.best_metric)
            self.best = None
        if self.best is None or not self.load_best_model_at_end:
            return
        if self.best["step"] == state.global_step:  # the checkpoint's weights are the best ones
            self._weights = snapshot(trainer.model)
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        rank, _ = world()
        name = f"unlearning_best.rank{rank}.pt" if model_is_sharded(trainer.model) else BEST_FILE
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("step") == self.best["step"]:
                self._weights, self._masks = saved["weights"], saved.get("masks")
                return
        logger.warning("The best evaluation so far (step %d) has no saved weights in %s: unless a later evaluation "
                       "is better, the final weights will be kept.", self.best["step"], path)


__all__ = ["UnlearningEvaluationCallback", "STATE_KEY"]
