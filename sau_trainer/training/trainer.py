"""`SAUTrainer`: unlearning a forget set from a sparse causal LM, keeping the sparsity exact.

The Trainer glue only decides *when* the math runs:
* once per optimizer step, after gradient accumulation and before clipping, the gradients of the
  prunable matrices are multiplied by ``M`` (plain baseline) or by ``G * W`` (SAU, ``grad`` mode);
* after every optimizer step the pruned entries are set back to exactly zero (and, in ``update``
  mode, the step of selected entries is first scaled by ``W``);
* ``M``, ``G``, ``W`` (and NPO's reference NLLs) are saved with every checkpoint and restored on resume.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from ..config import SAUConfig
from ..data.qa import QACollator, RowsDataset, tokenize_rows
from ..objectives import OBJECTIVES, ObjectiveContext, forward_nll
from .callbacks import SaliencyCallback, quiet_console
from .compensated import compensated_optimizer_cls_and_kwargs
from .masks import SparsityMasks, check_resume_masks
from .moving_mask import MovingMask
from .precision import UpdateCheckCallback, apply_precision_plan, check_precision, update_mode_rescaled
from .saliency import require_input_grads_if_reentrant
from .sparsity import SparsityPreserving
from .sparsity_setup import resolve_sparsity_masks, zero_pruned_entries
from .state import STATE_FILE, SAUState

logger = logging.getLogger("sau_trainer.trainer")  # its name before the move: users and tests set its level


class _ObjectiveCallback(TrainerCallback):
    """At train start: the objective's reference outputs, and the input-grad hook that frozen parameters need."""

    def __init__(self, trainer: SAUTrainer):
        self.trainer = trainer
        self._input_grads = None

    def on_train_begin(self, args, state, control, **kwargs):
        # Frozen parameters under reentrant checkpointing (transformers 4.57's default) need this; 5.x does it itself.
        self._input_grads = require_input_grads_if_reentrant(self.trainer.model)
        self.trainer._prepare_objective()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.objective.on_epoch_end(self.trainer, self.trainer.objective_ctx)

    def on_train_end(self, args, state, control, **kwargs):
        if self._input_grads is not None:
            self._input_grads.remove()
            self._input_grads = None


class SAUTrainer(SparsityPreserving, Trainer):
    """A `transformers.Trainer` that unlearns `forget_dataset` with plain masking or SAU.

    The masking and re-zeroing are `SparsityPreserving`'s, the mechanism every Trainer can use.

    Args:
        model: a causal LM whose prunable matrices are sparse (or dense).
        args: an `SAUConfig`.
        forget_dataset: rows with ``question``/``answer`` (loss on the answer and EOS) or ``text`` (a
            `datasets.Dataset` or a list of dicts).
        retain_dataset: rows as ``forget_dataset``'s, needed by objectives with a retain term; one retain
            batch is drawn per forget batch, seeded per rank and step.
        processing_class: the tokenizer.
        sparsity_masks: a `SparsityMasks`, a path to a saved mask file, or None to infer them from the
            model's exact zeros.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: SAUConfig,
        forget_dataset: Any = None,
        retain_dataset: Any = None,
        processing_class: Any = None,
        sparsity_masks: SparsityMasks | str | os.PathLike | None = None,
        data_collator: Any = None,
        callbacks: list | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, SAUConfig):
            raise TypeError(f"SAUTrainer needs `args=SAUConfig(...)`, got {type(args).__name__}.")
        if "train_dataset" in kwargs:
            raise TypeError("SAUTrainer takes `forget_dataset` (and `retain_dataset`), not `train_dataset`.")
        params, layouts, sparsity_masks = resolve_sparsity_masks(model, sparsity_masks, "SAUTrainer")
        self.objective = OBJECTIVES[args.objective](args)
        self.objective.bind_model(model)
        forget_rows = tokenize_rows(forget_dataset, processing_class, args.max_length, name="forget set",
                                    model=model)
        self.objective.setup(forget_dataset, processing_class)
        self.retain_rows = None
        if self.objective.uses_retain:
            if retain_dataset is None:
                raise ValueError(
                    f"objective={args.objective!r} has a retain term: pass retain_dataset=..., "
                    "or use objective='ga'."
                )
            self.retain_rows = tokenize_rows(retain_dataset, processing_class, args.max_length, name="retain set",
                                             model=model)
        elif args.sau and args.saliency_retain_aware:  # the retain saliency pass needs retain rows
            if retain_dataset is None:
                raise ValueError("saliency_retain_aware=True needs a retain set: pass retain_dataset=... (or turn the "
                                 "option off).")
            self.retain_rows = tokenize_rows(retain_dataset, processing_class, args.max_length, name="retain set",
                                             model=model)
        # precision: decided (or refused) before the model changes, carried out once the frozen ones are frozen
        self.precision_plan, kwargs = self._check_precision(model, args, params, kwargs, layouts)
        zero_pruned_entries(model, sparsity_masks)  # inputs are valid: now the model may change
        super().__init__(
            model=model,
            args=args,
            train_dataset=RowsDataset(forget_rows),
            data_collator=data_collator or QACollator(processing_class),
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        self._attach_sparsity(params, layouts, sparsity_masks)  # G and W come at train start (SaliencyCallback)
        if args.sau_moving_mask != "off":  # projection after each step instead of the re-zero (sparsity.py)
            self.moving_mask = MovingMask(sparsity_masks, layouts, args.sau_moving_mask)
        self.model_accepts_loss_kwargs = False  # compute_loss ignores num_items_in_batch: divide by GA steps
        self.objective_ctx = ObjectiveContext()
        self._dense_targets = self._dense_parameters() if args.sau and args.sau_dense_params == "topk" else {}
        self._micro_step = 0
        self._retain_perm: tuple[int, torch.Tensor] | None = None
        self._log_sums: dict[str, torch.Tensor] = {}
        self._log_count = 0
        if args.sau_dense_params == "freeze":
            for p in self._dense_parameters().values():
                p.requires_grad_(False)
        self._trainable_names = self.objective.trainable_names  # None: all; else the others are frozen
        if self._trainable_names is not None:
            for n, p in model.named_parameters():
                if n not in self._trainable_names:
                    p.requires_grad_(False)
        apply_precision_plan(model, self.precision_plan)
        if (self.is_fsdp_enabled or self.is_deepspeed_enabled) and self.objective.needs_reference_model:
            # a sharded model cannot be copied (FSDP2 refuses deepcopy; ZeRO-3 leaves empty tensors): the frozen
            # reference, the starting model, is copied now, before `prepare` shards it (a full copy per rank)
            self._build_reference_model()
            if isinstance(self.objective_ctx.ref_model, torch.nn.Module):
                self.objective_ctx.ref_model.to(self.args.device)
        self.add_callback(_ObjectiveCallback(self))
        quiet_console(self)  # log lines, not dicts on stdout, with disable_tqdm
        if args.update_check_steps and not (self.is_fsdp_enabled or self.is_deepspeed_enabled):  # the probe reads full tensors: not on shards
            self.update_check = UpdateCheckCallback(
                self.saliency_targets, self._selected_mask, lambda: self.optimizer, steps=args.update_check_steps,
                log=self.log, seed=args.seed, skipped=lambda: self._step_skipped)
            self.add_callback(self.update_check)
        if args.sau:
            self.add_callback(SaliencyCallback(self))

    # ------------------------------------------------------------------ precision
    def _check_precision(self, model, args: SAUConfig, params: dict, kwargs: dict, layouts: dict):
        """`sau_trainer.training.precision.check_precision` for this run: the optimizer that will train (the user's
        `optimizers`, `optimizer_cls_and_kwargs`, `compensated_optimizer` or `optim`) and the parameters that
        will stay trainable. Returns the plan and the Trainer kwargs (with the compensated optimizer)."""
        user_optimizer = (kwargs.get("optimizers") or (None, None))[0]
        cls_and_kwargs = kwargs.get("optimizer_cls_and_kwargs")
        if args.compensated_optimizer != "none":
            if user_optimizer is not None or cls_and_kwargs is not None:
                raise ValueError(
                    f"compensated_optimizer={args.compensated_optimizer!r} builds the optimizer; do not pass "
                    "`optimizers` or `optimizer_cls_and_kwargs` as well (or set compensated_optimizer='none').")
            cls_and_kwargs = compensated_optimizer_cls_and_kwargs(args.compensated_optimizer, args)
            kwargs = {**kwargs, "optimizer_cls_and_kwargs": cls_and_kwargs}
            logger.info("compensated_optimizer=%r: %s replaces optim=%r.", args.compensated_optimizer,
                        cls_and_kwargs[0].__name__, str(args.optim))
        prunable = {id(p) for p in params.values()}
        trainable = getattr(self.objective, "trainable_names", None)
        frozen = [n for n, p in model.named_parameters()
                  if (args.sau_dense_params == "freeze" and id(p) not in prunable)
                  or (trainable is not None and n not in trainable)]
        rescaled = set()
        if args.sau and args.sau_redistribution_target == "update":
            with_w = set(params) | ({n for n, p in model.named_parameters() if id(p) not in prunable}
                                    if args.sau_dense_params == "topk" else set())
            rescaled = update_mode_rescaled(with_w, layouts, args.sau_redistribution)
        plan = check_precision(model, args, optimizer=user_optimizer, optimizer_cls_and_kwargs=cls_and_kwargs,
                               update_mode=rescaled, exclude=frozen)
        return plan, kwargs

    def _selected_mask(self, name: str) -> torch.Tensor:
        """The entries whose updates matter: `G` with SAU, the surviving mask `M` for plain."""
        if self.sau_state is not None:
            return self.sau_state.mask(name)
        return self.surviving_mask(name)

    # ------------------------------------------------------------------ parameters
    def _dense_parameters(self) -> dict[str, torch.nn.Parameter]:
        prunable = {id(p) for p in self._prunable.values()}
        return {n: p for n, p in self.model.named_parameters() if id(p) not in prunable and p.requires_grad}

    def masked_parameters(self) -> dict[str, torch.nn.Parameter]:
        return self.saliency_targets()

    def _refresh_parameters(self) -> None:
        super()._refresh_parameters()
        if self._dense_targets:
            self._dense_targets = self._dense_parameters()

    def _sau_update_mode(self) -> bool:
        return self.args.sau_redistribution_target == "update"

    def saliency_targets(self) -> dict[str, torch.nn.Parameter]:
        """The parameters that get a saliency score: the prunable matrices (+ dense ones in ``topk`` mode),
        only those the objective trains where it declares `trainable_names` (RMU)."""
        targets = {**self._prunable, **self._dense_targets}
        if self._trainable_names is not None:
            targets = {n: p for n, p in targets.items() if n in self._trainable_names}
        return targets

    def surviving_mask(self, name: str, device=None) -> torch.Tensor:
        if name in self.sparsity_masks:
            return self.sparsity_masks.get(name, device)
        p = self._dense_targets[name]
        return torch.ones(p.shape, dtype=torch.bool, device=device or p.device)

    # ------------------------------------------------------------------ data
    def _retain_batch(self) -> dict[str, torch.Tensor]:
        """The retain batch paired with the current micro-step: a seeded stream of permutations per rank."""
        bs, n = self.args.per_device_train_batch_size, len(self.retain_rows)
        draw = self.state.global_step * self.args.gradient_accumulation_steps + self._micro_step
        rank = self.args.process_index
        picks = []
        for pos in range(draw * bs, draw * bs + bs):
            epoch, j = divmod(pos, n)
            if self._retain_perm is None or self._retain_perm[0] != epoch:
                g = torch.Generator().manual_seed((self.args.seed * 1_000_003 + rank) * 1_000_003 + epoch)
                self._retain_perm = (epoch, torch.randperm(n, generator=g))
            picks.append(self.retain_rows[int(self._retain_perm[1][j])])
        return self._prepare_inputs(self.data_collator(picks))

    # ------------------------------------------------------------------ loss and step
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        retain = self._retain_batch() if self.objective.uses_retain else None
        self.objective_ctx.epoch = int(self.state.epoch or 0)
        loss, logs = self.objective(model, inputs, retain, self.objective_ctx)
        if model.training:  # summed on device: no host sync per micro-step
            for k, v in logs.items():
                self._log_sums[k] = self._log_sums.get(k, 0.0) + v
            self._log_count += 1
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)  # masks the gradients on the last micro-step
        self._micro_step = 0 if self.accelerator.sync_gradients else self._micro_step + 1
        return loss

    # ------------------------------------------------------------------ preparation (at train start)
    @torch.no_grad()
    def _prepare_objective(self) -> None:
        """Reference NLLs of the forget set (NPO) and the frozen reference model (KL retain), if needed."""
        if self.objective.needs_reference_nll and self.objective_ctx.ref_forget_nll_sum is None:
            self.objective_ctx.ref_forget_nll_sum = self.forget_nll_sums()
        if self.objective.needs_reference_model and self.objective_ctx.ref_model is None:
            self._build_reference_model()
        self.objective.prepare(self, self.objective_ctx)

    def _build_reference_model(self) -> None:
        self.objective_ctx.ref_model = self.objective.build_reference(self.model)

    @torch.no_grad()
    def forget_nll_sums(self) -> torch.Tensor:
        """Per-example answer NLL sum of the current model over the forget set (eval mode, fp32 result)."""
        return self.answer_nll_sums(self.train_dataset.rows)

    @torch.no_grad()
    def answer_nll_sums(self, rows: list[dict]) -> torch.Tensor:
        """Per-row answer NLL sum of the current model over encoded `rows` (eval mode, fp32, on every rank)."""
        model = self.model
        was_training = model.training
        model.eval()
        bs = self.args.saliency_batch_size or self.args.per_device_train_batch_size
        out = torch.zeros(len(rows), dtype=torch.float32)
        for start in range(0, len(rows), bs):
            batch = self._prepare_inputs(self.data_collator(rows[start : start + bs]))
            with self.autocast_smart_context_manager():
                nll_sum = forward_nll(model, batch)[0]
            out[start : start + len(nll_sum)] = nll_sum.float().cpu()
        model.train(was_training)
        return out

    def saliency_batches(self, shard: bool = True, max_examples: int | None = None, rows: list | None = None):
        """The first `max_examples` forget rows in order, in batches of ``saliency_batch_size``, sharded by rank.

        The cut comes before the sharding, so the batches (and G) do not depend on the number of processes.
        """
        bs = self.args.saliency_batch_size or self.args.per_device_train_batch_size
        rows = (self.train_dataset.rows if rows is None else rows)[:max_examples]
        world, rank = (self.args.world_size, self.args.process_index) if shard else (1, 0)
        for b, start in enumerate(range(0, len(rows), bs)):
            if b % world == rank:
                yield self._prepare_inputs(self.data_collator(rows[start : start + bs]))

    # ------------------------------------------------------------------ logging, saving, resuming
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._log_count and "loss" in logs:
            for k, v in self._log_sums.items():
                logs[k] = round(float(v) / self._log_count, 6)
            self._log_sums, self._log_count = {}, 0
        super().log(logs, *args, **kwargs)

    def save_sparsity_files(self, output_dir: str) -> None:
        self.save_sau_files(output_dir)

    def save_sau_files(self, output_dir: str) -> None:
        """Write the sparsity masks and the SAU state (G, W, settings, stats, reference NLLs) to `output_dir`."""
        os.makedirs(output_dir, exist_ok=True)
        self.sparsity_masks.save(output_dir)
        state = self.sau_state or SAUState(selected={}, shapes={}, settings={"sau": False})
        if self.objective_ctx.ref_forget_nll_sum is not None:
            state.extra["ref_forget_nll_sum"] = self.objective_ctx.ref_forget_nll_sum
        for key, value in self.objective_ctx.tensors.items():
            state.extra[f"objective.{key}"] = value
        state.save(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.objective.needs_reference_model and self.objective_ctx.ref_model is None:
            self._build_reference_model()  # the reference is the starting model, not the checkpoint
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._restore_sau_files(resume_from_checkpoint)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint and self.is_deepspeed_enabled:
            # DeepSpeed resumes through its engine, not `_load_from_checkpoint`: M, G and W are restored here
            path = resume_from_checkpoint
            if path is True:
                path = get_last_checkpoint(self.args.output_dir)
            if path:
                self._restore_sau_files(path)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _restore_sau_files(self, resume_from_checkpoint: str) -> None:
        """M, G, W and the objective's saved tensors from a checkpoint directory (no new saliency pass)."""
        if not os.path.isfile(os.path.join(resume_from_checkpoint, STATE_FILE)):
            if self.args.sau:
                raise ValueError(
                    f"Checkpoint {resume_from_checkpoint} has no SAU state ({STATE_FILE}); recomputing G and W would "
                    "select from the changed weights. Resume from a checkpoint saved by SAUTrainer, or start anew."
                )
            return
        state = SAUState.load(resume_from_checkpoint)
        masks = SparsityMasks.load(resume_from_checkpoint, self.model)
        check_resume_masks(self.sparsity_masks, masks, resume_from_checkpoint, moving=self.moving_mask is not None)
        self.sparsity_masks = masks.to(self.args.device)
        if "ref_forget_nll_sum" in state.extra:
            self.objective_ctx.ref_forget_nll_sum = state.extra.pop("ref_forget_nll_sum")
        for key in [k for k in state.extra if k.startswith("objective.")]:
            self.objective_ctx.tensors[key.removeprefix("objective.")] = state.extra.pop(key)
        if self.args.sau:
            wanted = self.args.sau_settings()
            if state.settings != wanted:
                diff = {k: (state.settings.get(k), v) for k, v in wanted.items() if state.settings.get(k) != v}
                raise ValueError(
                    f"The checkpoint's G and W were made with other SAU settings (checkpoint, now): {diff}. "
                    "Resume with the original settings or start a new run."
                )
            self.sau_state = state.to(self.args.device)
            logger.info("Restored M, G and W from %s (no new saliency pass).", resume_from_checkpoint)
