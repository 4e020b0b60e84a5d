"""Sparsity kept exact under any `transformers.Trainer`: the one masking mechanism of the package.

`SparsityPreserving` is a Trainer mixin. Once per optimizer step (after gradient accumulation, before
clipping) it multiplies the prunable gradients by the sparsity mask ``M``, or by ``G * W`` when an SAU state
is attached (one fused pass per matrix, `sau_trainer.fused`); after every optimizer step it sets the pruned
entries back to exactly zero, unless the optimizer provably leaves zero-gradient zeros where they are
(`optimizer_keeps_zeros`: torch AdamW, Adam, SGD; bitsandbytes 8-bit AdamW moves such entries, and so may any
optimizer not known). No pass reads a value back to the host. `SAUTrainer` is built on it;
`sparsity_preserving(TrainerClass)` (`training.any_trainer`) gives the same to any Trainer subclass, trl's
``SFTTrainer`` and ``DPOTrainer`` included. The FSDP2 and DeepSpeed passes are `training.parallel_steps`, update
mode `training.update_mode`, the checks before training `training.sparsity_setup`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from ..core.fused import scale_update_, where_many_
from ..core.prunable import Layout
from ..parallel.backend import Backend, DataParallelBackend
from ..parallel.launch import (
    check_distributed_type,
    check_request,
    enable_fsdp_on_cpu,
    requested_distributed_type,
)
from ..parallel.shards import local
from ..parallel.weights import project_sharded_, project_zero_
from ..progress import bars_off, log_once
from .divergence import DivergenceChecks, DivergenceGuard
from .masks import SparsityMasks
from .parallel_steps import ParallelSteps
from .sparsity_setup import optimizer_keeps_zeros
from .state import SAUState
from .update_mode import UpdateModeSteps

logger = logging.getLogger("sau_trainer.sparsity")  # its name before the move: users and tests set its level


class SparsityCallback(TrainerCallback):
    """Around each optimizer step: snapshot for ``update``-mode ``W``, then scale the step and re-zero."""

    def __init__(self, trainer: SparsityPreserving):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer._setup_deepspeed():  # ZeRO-2/3: the mask pass runs inside the engine's step
            return
        if self.trainer._setup_shards():  # FSDP2: the passes run on local shards of M, G and W
            self.trainer._rezero_weights()
            return
        if args.world_size > 1:
            self.trainer.backend = DataParallelBackend(args.world_size, args.process_index)
        self.trainer.sparsity_masks.to(args.device)
        # Pruned entries start as +0.0 (a -0.0 from pruning by multiplication would otherwise stay -0.0 where the
        # optimizer keeps zeros and the re-zero is skipped); one pass, once.
        self.trainer.sparsity_masks.apply_(self.trainer.model, self.trainer._prunable)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.backend.steps_in_backward:
            return  # the engine stepped inside the backward, after the check (`_setup_deepspeed`)
        if self.trainer._step_is_finite():  # else TrainingDiverged, or the step's gradients dropped (skipped)
            self.trainer._snapshot_for_update_mode()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if not self.trainer._step_skipped:
            self.trainer._after_optimizer_step()


class SparsityPreserving(ParallelSteps, UpdateModeSteps, DivergenceChecks):
    """Trainer mixin (put it before the Trainer class): pruned entries stay exactly zero, for every optimizer.

    Attributes set by `_attach_sparsity`: ``sparsity_masks`` (``M``), ``sau_state`` (``G`` and ``W``, or None
    for plain masking), ``layouts``. `masked_parameters` says whose gradients get ``G``; ``update`` mode
    (`_sau_update_mode`) scales the optimizer's step of selected entries by ``W`` instead of the gradient.
    """

    sparsity_masks: SparsityMasks
    sau_state: SAUState | None = None
    moving_mask: Any = None  # a `moving_mask.MovingMask`: train every entry, project after each step
    backend: Backend = Backend()  # where the tensors live (`sau_trainer.parallel.backend`), set at train start

    def _attach_sparsity(
        self, params: Mapping[str, torch.nn.Parameter], layouts: Mapping[str, Layout], masks: SparsityMasks,
        sau_state: SAUState | None = None,
    ) -> None:
        self.backend = Backend()  # one process until train start says otherwise (DDP, FSDP2, DeepSpeed)
        self._shards: dict = {}  # name -> shards.RowShard under FSDP2 (set at train start), else empty
        self._prunable = dict(params)
        self.layouts = dict(layouts)
        self.sparsity_masks = masks
        self.sau_state = sau_state
        self._snapshots: dict[str, torch.Tensor] = {}
        self._divergence = DivergenceGuard(skip=getattr(self.args, "skip_nonfinite_steps", False))
        self._step_skipped = False
        self.add_callback(SparsityCallback(self))

    # ---- what the mechanism acts on (SAUTrainer refines these)
    def masked_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters whose gradients get ``G * W`` when an SAU state is attached (default: the prunable ones
        that the state covers)."""
        if self.sau_state is None:
            return self._prunable
        return {n: p for n, p in self._prunable.items() if n in self.sau_state.selected}

    def _sau_update_mode(self) -> bool:
        return False

    # ---- the launch contract (sau_trainer.parallel.launch)
    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator, then FSDP on CPU processes where it was asked for and accelerate fell back
        to DDP, and a clear error when the distributed type differs from the one asked for."""
        requested = requested_distributed_type(self.args)
        check_request(self.args, requested)
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self, requested)
        check_distributed_type(self, requested)

    @torch.no_grad()
    def _rezero_weights(self) -> None:
        """Pruned entries to exactly +0.0: the whole model, or each rank's shards under FSDP2."""
        if not self._shards:
            self.sparsity_masks.apply_(self.model, self._prunable)
            return
        where_many_((local(p.data), self._local_m[n], None) for n, p in self._prunable.items()
                    if local(p.data).numel())

    # ---- the step
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._divergence.add_loss(loss)  # summed on the device; checked once per optimizer step
        if self.accelerator.sync_gradients:
            self._mask_gradients()
        return loss

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        """Once per optimizer step: ``grad = where(M, grad, 0)`` (plain) or ``grad = where(G, grad * W, 0)`` (SAU),
        one fused pass per matrix over the gradient and the bit planes of its mask (`sau_trainer.fused`), with no
        device-to-host synchronisation."""
        if self.backend.steps_in_backward:
            return  # in the engine's step (`_setup_deepspeed`)
        if self._shards:
            return self._mask_gradients_sharded()
        if self.sau_state is None:
            if self.moving_mask is not None:  # plain with a moving mask: every entry is trained
                return
            where_many_((p.grad, self.sparsity_masks.planes(name, p.grad.device), None)
                        for name, p in self._prunable.items() if p.grad is not None)
            return
        use_w = not self._sau_update_mode()
        masked = self.masked_parameters()
        items = [(p.grad, self.sau_state.planes(name, p.grad.device), self.sau_state.weight(name) if use_w else None)
                 for name, p in masked.items() if p.grad is not None]
        # prunable but outside G's parameters (if trained at all): M
        items += [(p.grad, self.sparsity_masks.planes(name, p.grad.device), None)
                  for name, p in self._prunable.items() if name not in masked and p.grad is not None]
        where_many_(items)

    def _rezero_needed(self) -> bool:
        """Whether pruned entries must be set back to zero after a step: True unless the optimizer provably leaves
        an entry whose gradient is always exactly zero where it is (`optimizer_keeps_zeros`)."""
        optimizer = getattr(self, "optimizer", None)
        key = id(optimizer)
        if getattr(self, "_rezero_for", (None, True))[0] != key:
            keeps = optimizer is not None and optimizer_keeps_zeros(optimizer)
            self._rezero_for = (key, not keeps)
            # once per process: a grid trains many models alike
            log_once(logger, logging.INFO, "Re-zero after each optimizer step: %s.",
                        "skipped (the optimizer leaves zero-gradient entries exactly where they are)" if keeps
                        else "on (the optimizer is not known to leave zero-gradient entries in place)")
        return self._rezero_for[1]

    @torch.no_grad()
    def _after_optimizer_step(self) -> None:
        """Scale the step of selected entries by W (``update`` mode), then set pruned entries back to zero where
        the optimizer could have moved them."""
        self._merge_lr_groups()
        if self._snapshots:
            params = self.masked_parameters()
            for name, old in self._snapshots.items():
                p = params[name]
                if self._shards:
                    if old.numel():
                        scale_update_(local(p.data), old, self._local_g[name], self._local_w[name])
                    continue
                scale_update_(p.data, old, self.sau_state.planes(name, p.device), self.sau_state.weight(name))
            self._snapshots = {}
        if self.moving_mask is not None:  # keeps the count per unit (or N:M) exact; the support may move
            self._project_moving_mask()
        elif not self.backend.steps_in_backward and self._rezero_needed():
            self._rezero_weights()

    @torch.no_grad()
    def _project_moving_mask(self) -> None:
        """The moving mask's projection after a step, where the weights live (`sau_trainer.parallel.weights`)."""
        if self.backend.steps_in_backward:
            project_zero_(self.moving_mask, self._prunable, self.sparsity_masks)
        elif self.backend.sharded:
            self._local_m.update(project_sharded_(self.moving_mask, self._prunable, self.sparsity_masks, self.backend))
        else:
            self.moving_mask.project_(self._prunable, self.sparsity_masks)

    def rezero_pruned_entries(self) -> None:
        """Set the pruned entries back to exactly zero where the trainer owns the weights (not inside DeepSpeed's
        engine, whose zero-keeping optimizer leaves them zero): e.g. after loading a snapshot of the weights."""
        if not self.backend.steps_in_backward:
            self._rezero_weights()

    # ---- files
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with bars_off(self.args.disable_tqdm):  # transformers' "Writing model shards" bar ignores disable_tqdm
            if self.is_fsdp_enabled and not _internal_call and not self._saves_full_state_dict():
                # FSDP2 with sharded checkpoints: `save_model(dir)` still writes full weights under one-process names
                from torch.distributed.checkpoint.state_dict import (  # FSDP2 only: a large import
                    StateDictOptions,
                    get_model_state_dict,
                )

                state_dict = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True,
                                                                                       cpu_offload=True))
                self._save(output_dir or self.args.output_dir, state_dict=state_dict)
            else:
                super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.save_sparsity_files(output_dir or self.args.output_dir)

    def _saves_full_state_dict(self) -> bool:
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        return plugin is not None and "FULL_STATE_DICT" in str(plugin.state_dict_type)

    def save_sparsity_files(self, output_dir: str) -> None:
        """Write the sparsity masks (and the SAU state, if any) beside the saved model."""
        os.makedirs(output_dir, exist_ok=True)
        self.sparsity_masks.save(output_dir)
        if self.sau_state is not None:
            self.sau_state.save(output_dir)
