"""Sparsity kept exact under any `transformers.Trainer`: the one masking mechanism of the package.

`SparsityPreserving` is a Trainer mixin. Once per optimizer step (after gradient accumulation, before
clipping) it multiplies the prunable gradients by the sparsity mask ``M``, or by ``G * W`` when an SAU state
is attached (one fused pass per matrix, `sau_trainer.fused`); after every optimizer step it sets the pruned
entries back to exactly zero, unless the optimizer provably leaves zero-gradient zeros where they are
(`optimizer_keeps_zeros`: torch AdamW, Adam, SGD; bitsandbytes 8-bit AdamW moves such entries, and so may any
optimizer not known). No pass reads a value back to the host. `SAUTrainer` is built on it;
`sparsity_preserving(TrainerClass)` gives the same to any Trainer subclass, trl's ``SFTTrainer`` and
``DPOTrainer`` included, and `compute_sau_state` computes ``G`` and ``W`` from a forget set for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from .divergence import DivergenceChecks, DivergenceGuard
from .fused import pack_planes, scale_update_, where_many_
from .masks import Layout, LazyMasks, SparsityMasks, check_trainable_weights, prunable_weights
from .parallel.backend import Backend, DataParallelBackend, DeepSpeedBackend, ShardedBackend
from .precision import apply_precision_plan, check_precision, unwrap_optimizer
from .progress import bars_off
from .sau import STATE_FILE, SAUState, build_sau_state

logger = logging.getLogger(__name__)


def resolve_sparsity_masks(
    model: torch.nn.Module, sparsity_masks: SparsityMasks | str | os.PathLike | None, who: str = "The trainer"
) -> tuple[dict[str, torch.nn.Parameter], dict[str, Layout], SparsityMasks]:
    """Validate `model` and its masks (a `SparsityMasks`, a saved mask file, or None: inferred from the model's
    exact zeros); returns the prunable parameters, their layouts and the masks. Changes nothing."""
    weights = prunable_weights(model)  # also rejects PEFT-wrapped models
    params = {n: w.param for n, w in weights.items()}
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no prunable matrices (nn.Linear layers or fused experts inside the "
            f"language model's decoder blocks); {who} needs a decoder-only transformer such as Llama, Mistral, "
            "Qwen or Mixtral."
        )
    check_trainable_weights(params)
    if sparsity_masks is None:
        sparsity_masks = SparsityMasks.from_model(model)
    elif not isinstance(sparsity_masks, SparsityMasks):
        sparsity_masks = SparsityMasks.load(sparsity_masks, model)
    sparsity_masks.check(model)
    return params, {n: w.layout for n, w in weights.items()}, sparsity_masks


# Update mode under DeepSpeed ZeRO: the mechanical reason it is refused (SPEC section 2, "Where W acts").
UPDATE_MODE_UNDER_ZERO = (
    "sau_redistribution_target='update' cannot run under DeepSpeed ZeRO-2/3: update mode scales each selected "
    "entry's optimizer step, p_old + W * (p_new - p_old), or, for one W per matrix, gives the matrix its own "
    "learning rate; DeepSpeed's engine steps its own fp32 master partitions inside the backward (flat slices cut "
    "across rows and matrices), so the trainer never holds p_old between the gradient and the step, and the "
    "optimizer's parameter groups are flattened when the engine is built, before the saliency pass gives W. Use "
    "sau_redistribution_target='grad', or update mode with FSDP2 (recipes/accelerate/fsdp2.yaml), DDP or one process.")


def zero_pruned_entries(model: torch.nn.Module, masks: SparsityMasks) -> None:
    """Set pruned entries that are not zero to zero, with a warning (the masks, not the zeros, are the truth)."""
    nonzero = masks.count_nonzero_pruned(model)
    if nonzero:
        logger.warning("%d pruned entries of the model were not zero; setting them to zero before training.", nonzero)
        masks.apply_(model)


# Optimizers that provably leave an entry whose gradient is always exactly zero (and whose weight is zero) where it
# is, with or without (decoupled) weight decay, momentum, amsgrad, maximize, foreach or fused kernels: every
# moment stays 0, so the step is ``+0 * (1 - lr * wd) - lr * 0 / (0 + eps) = +0`` (Adam/AdamW) or
# ``-lr * (0 + wd * 0) = +0`` (SGD). The exact class is required: a subclass may change the step.
# Not here (the re-zero stays): bitsandbytes 8-bit/paged AdamW (block-wise quantised moments move zero-gradient
# entries), stochastic-rounding and Kahan-compensated optimizers, and anything else.
ZERO_KEEPING_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def optimizer_keeps_zeros(optimizer: Any) -> bool:
    """True when `optimizer` (unwrapped from accelerate's wrapper) is exactly one of `ZERO_KEEPING_OPTIMIZERS`.

    The argument needs the pruned entries' weights and optimizer state to be zero when training starts: the
    trainer zeroes the weights; the state is empty, or was saved by a run with the same masks."""
    opt = unwrap_optimizer(optimizer)
    return type(opt) in ZERO_KEEPING_OPTIMIZERS


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


class SparsityPreserving(DivergenceChecks):
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

    # ---- the launch contract (sau_trainer.distributed)
    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator, then FSDP on CPU processes where it was asked for and accelerate fell back
        to DDP, and a clear error when the distributed type differs from the one asked for."""
        from .distributed import (
            check_distributed_type,
            check_request,
            enable_fsdp_on_cpu,
            requested_distributed_type,
        )

        requested = requested_distributed_type(self.args)
        check_request(self.args, requested)
        super().create_accelerator_and_postprocess()
        enable_fsdp_on_cpu(self, requested)
        check_distributed_type(self, requested)

    # ---- sharded parameters (FSDP2: sau_trainer.shards)
    def _refresh_parameters(self) -> None:
        """After the model was sharded: the prunable parameters are the sharded ones (same names)."""
        self._prunable = {n: w.param for n, w in prunable_weights(self.model).items()}

    def _setup_shards(self) -> bool:
        """At train start, once the model is prepared: if its parameters are FSDP2 shards, keep the local rows of
        ``M`` (and of ``G`` and ``W``) on the device as bit planes; the full masks stay on the CPU for the files
        and `sau_state.mask`. Returns whether the model is sharded."""
        from .shards import RowShard, is_sharded, local

        if not self.is_fsdp_enabled:
            return False
        self._refresh_parameters()
        if not any(is_sharded(p) for p in self._prunable.values()):
            return False
        self._shards = {n: RowShard.of(n, p) for n, p in {**self._prunable, **self.masked_parameters()}.items()}
        first = next(iter(self._prunable.values()))
        self.backend = ShardedBackend(self._shards, device=local(first).device)
        self.sparsity_masks.to("cpu")
        self._local_m = {n: pack_planes(self._shards[n].local(self.sparsity_masks.get(n))).to(local(p).device)
                         for n, p in self._prunable.items()}
        self._localized_state = None
        self._localize_state()
        return True

    def _localize_state(self) -> None:
        """The local rows of ``G`` (bit planes) and ``W`` of the attached SAU state (full, on the CPU)."""
        from .shards import local

        state = self.sau_state
        if not self._shards or state is None or self._localized_state is state:
            return
        state.to("cpu")
        params = {**self._prunable, **self.masked_parameters()}
        self._local_g, self._local_w = {}, {}
        for n in state.selected:
            shard, dev = self._shards[n], local(params[n]).device
            self._local_g[n] = pack_planes(shard.local(state.mask(n))).to(dev)
            w = state.weight(n)
            if w is not None:
                self._local_w[n] = shard.local(w).to(dev)
        self._localized_state = state

    # ---- DeepSpeed ZeRO-2/3 (the optimizer steps inside `accelerator.backward`; `p.grad` is None)
    def _setup_deepspeed(self) -> bool:
        """At train start under DeepSpeed: run the mask pass inside the engine's ``step`` (after backward and the
        gradient reduction, before DeepSpeed's clipping and the optimizer step), through DeepSpeed's gradient
        accessors. Pruned weights stay exactly zero without a re-zero because the optimizer must be one that
        leaves zero-gradient zeros in place (torch AdamW, Adam, SGD); others are refused."""
        if not self.is_deepspeed_enabled:
            return False
        if self._divergence.skip:
            raise ValueError("skip_nonfinite_steps is not supported under DeepSpeed (its engine steps inside the "
                             "backward): leave it off (a non-finite step then raises TrainingDiverged), or use FSDP2, "
                             "DDP or one process.")
        if self._sau_update_mode():
            raise ValueError(UPDATE_MODE_UNDER_ZERO)
        opt = self.optimizer
        for _ in range(4):  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> the torch optimizer
            if getattr(opt, "optimizer", None) is None:
                break
            opt = opt.optimizer
        if type(opt) not in ZERO_KEEPING_OPTIMIZERS:
            raise ValueError(
                f"Under DeepSpeed the pruned weights are kept zero by a zero-keeping optimizer (torch AdamW, Adam or "
                f"SGD: optim='adamw_torch'), not by a re-zero on ZeRO's partitions; got {type(opt).__name__}.")
        engine = self.model_wrapped
        step = engine.step

        def masked_step(*args, **kwargs):
            # the full gradients are the reduced ones, equal on every rank: so is the decision (the loss summed so
            # far lacks this micro-batch's, which `training_step` adds after the backward: a non-finite loss shows
            # in the gradients)
            self._divergence.note_grad_norm(self._mask_gradients_deepspeed())
            self._step_is_finite()
            return step(*args, **kwargs)

        engine.step = masked_step
        self.backend = DeepSpeedBackend(engine, self.args.world_size, self.args.process_index)
        return True

    @torch.no_grad()
    def _mask_gradients_deepspeed(self) -> torch.Tensor | None:
        """``grad = where(M, grad, 0)`` or ``where(G, grad * W, 0)`` on the full gradients that DeepSpeed's accessors
        give (gathered under ZeRO-3; every rank calls them in the same order), written back to its partitions.
        Returns the norm of those gradients before masking (for `DivergenceGuard`), None if there were none."""
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        from .sau import apply_sau_

        state = self.sau_state
        masked = self.masked_parameters() if state is not None else {}
        use_w = not self._sau_update_mode()
        train_all = state is None and self.moving_mask is not None  # plain with a moving mask: every entry trained
        norms = []
        for name, p in {**self._prunable, **masked}.items():
            g = safe_get_full_grad(p)
            if g is None:
                continue
            g = g.clone()
            norms.append(torch.linalg.vector_norm(g.float()))
            if train_all:
                continue
            if name in masked:
                apply_sau_(g, state.mask(name, g.device), state.weight(name) if use_w else None)
            else:
                apply_sau_(g, self.sparsity_masks.get(name, g.device))
            safe_set_full_grad(p, g)
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else None

    @torch.no_grad()
    def _mask_gradients_sharded(self) -> None:
        from .shards import local

        if self.sau_state is None:
            if self.moving_mask is None:
                where_many_((local(p.grad), self._local_m[n], None) for n, p in self._prunable.items()
                            if p.grad is not None and local(p.grad).numel())
            return
        self._localize_state()
        use_w = not self._sau_update_mode()
        masked = self.masked_parameters()
        items = [(local(p.grad), self._local_g[n], self._local_w.get(n) if use_w else None)
                 for n, p in masked.items() if p.grad is not None and local(p.grad).numel()]
        items += [(local(p.grad), self._local_m[n], None) for n, p in self._prunable.items()
                  if n not in masked and p.grad is not None and local(p.grad).numel()]
        where_many_(items)

    @torch.no_grad()
    def _rezero_weights(self) -> None:
        """Pruned entries to exactly +0.0: the whole model, or each rank's shards under FSDP2."""
        if not self._shards:
            self.sparsity_masks.apply_(self.model, self._prunable)
            return
        from .shards import local

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

    @torch.no_grad()
    def _snapshot_for_update_mode(self) -> None:
        """``update`` mode, before the step. A matrix with one ``W`` (per-matrix redistribution of a plain matrix)
        gets its own parameter group for this step, with the learning rate scaled by ``W``: no copy and no extra
        pass (this also scales decoupled weight decay on its entries outside ``G``). Every other ``W`` (per row, per
        entry, per expert) keeps a dense copy of its parameter for `_after_optimizer_step` (the selected entries
        alone would need a data-dependent gather: a device-to-host sync per matrix)."""
        self._snapshots = {}
        if self.sau_state is None or not self._sau_update_mode():
            return
        params = self.masked_parameters()
        scaled = self._split_lr_groups(params)
        from .shards import local

        for name in self.sau_state.weights:
            if name not in scaled:
                self._snapshots[name] = local(params[name].detach()).clone()

    def _lr_scales(self, optimizer: Any, params: Mapping[str, torch.nn.Parameter]) -> dict[int, float]:
        """id(param) -> W for the parameters whose ``W`` is one number and whose group has a learning rate. W is read
        to the host once per optimizer (the only sync), then reused every step."""
        cached = getattr(self, "_lr_scale_cache", None)
        if cached is not None and cached[0] is optimizer:
            return cached[1]
        in_groups = {id(p) for g in optimizer.param_groups if "lr" in g for p in g["params"]}
        scales = {}
        for name, w in self.sau_state.weights.items():
            p = params.get(name)
            layout = self.layouts.get(name)
            if p is not None and w.numel() == 1 and id(p) in in_groups and not (layout and layout.experts):
                scales[id(p)] = float(w)
        self._lr_scale_cache = (optimizer, scales)
        return scales

    def _split_lr_groups(self, params: Mapping[str, torch.nn.Parameter]) -> set[str]:
        """For this step only: each parameter with a scalar ``W`` in a group of its own, ``lr = group lr * W`` (the
        scheduler's lr of the step). `_merge_lr_groups` restores the groups right after the step, so checkpoints,
        schedulers and logs see the optimizer as built. Returns the names handled this way."""
        self._lr_split = None
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            return set()
        opt = unwrap_optimizer(optimizer)
        scales = self._lr_scales(opt, params)
        if not scales:
            return set()
        original, children = [(g, g["params"]) for g in opt.param_groups], []
        for group in list(opt.param_groups):
            moved = [p for p in group["params"] if id(p) in scales]
            if not moved:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in scales]
            for p in moved:
                child = {k: v for k, v in group.items() if k != "params"}
                child["params"], child["lr"] = [p], group["lr"] * scales[id(p)]
                children.append(child)
        opt.param_groups.extend(children)
        self._lr_split = (opt, original)
        return {n for n, p in params.items() if id(p) in scales}

    def _merge_lr_groups(self) -> None:
        split, self._lr_split = getattr(self, "_lr_split", None), None
        if split is not None:
            opt, original = split
            opt.param_groups[:] = [g for g, _ in original]
            for group, plist in original:
                group["params"] = plist

    def _rezero_needed(self) -> bool:
        """Whether pruned entries must be set back to zero after a step: True unless the optimizer provably leaves
        an entry whose gradient is always exactly zero where it is (`optimizer_keeps_zeros`)."""
        optimizer = getattr(self, "optimizer", None)
        key = id(optimizer)
        if getattr(self, "_rezero_for", (None, True))[0] != key:
            keeps = optimizer is not None and optimizer_keeps_zeros(optimizer)
            self._rezero_for = (key, not keeps)
            from .progress import log_once  # once per process: a grid trains many models alike

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
                    from .shards import local

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
            from .parallel.weights import project_zero_

            project_zero_(self.moving_mask, self._prunable, self.sparsity_masks)
        elif self.backend.sharded:
            from .parallel.weights import project_sharded_

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
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

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


def sparsity_preserving(trainer_cls: type) -> type:
    """A subclass of `trainer_cls` (any `transformers.Trainer` subclass, e.g. trl's ``SFTTrainer`` or
    ``DPOTrainer``) that keeps every pruned entry exactly zero.

    It takes two extra keyword arguments: ``sparsity_masks`` (a `SparsityMasks`, a path to a saved mask file,
    or None to infer them from the model's exact zeros) and ``sau_state`` (an `SAUState` from
    `compute_sau_state`: then only the selected entries ``G`` are trained, their gradients scaled by ``W``).
    Low-precision weights are checked as `SAUTrainer` checks them (upcast to fp32 master weights unless the
    optimizer compensates; see `sau_trainer.precision`). `save_model` writes the mask file beside the weights.
    """
    if isinstance(trainer_cls, type) and issubclass(trainer_cls, SparsityPreserving):
        return trainer_cls

    def __init__(self, *args: Any, sparsity_masks=None, sau_state: SAUState | None = None, **kwargs: Any):
        trainer_cls.__init__(self, *args, **kwargs)
        params, layouts, masks = resolve_sparsity_masks(self.model, sparsity_masks, trainer_cls.__name__)
        if sau_state is not None:
            unknown = [n for n in sau_state.selected if n not in params]
            if unknown:
                raise ValueError(f"The SAU state names {unknown[0]!r}, which is not a prunable weight of this model. "
                                 "Compute it with compute_sau_state on the same model.")
        plan = check_precision(self.model, self.args, optimizer=self.optimizer,
                               optimizer_cls_and_kwargs=getattr(self, "optimizer_cls_and_kwargs", None))
        zero_pruned_entries(self.model, masks)
        apply_precision_plan(self.model, plan)
        self._attach_sparsity(params, layouts, masks, sau_state)

    name = f"SparsityPreserving{trainer_cls.__name__}"
    return type(name, (SparsityPreserving, trainer_cls), {"__init__": __init__, "__doc__": sparsity_preserving.__doc__,
                                                        "__module__": __name__, "__qualname__": name})


def compute_sau_state(
    model: torch.nn.Module,
    tokenizer: Any,
    forget_dataset: Any,
    sparsity_masks: SparsityMasks | str | os.PathLike | None = None,
    k: float = 0.3,
    alpha: float = 0.1,
    scope: str = "matrix",
    redistribution: str = "matrix",
    batch_size: int = 8,
    max_length: int = 512,
    granularity: str = "batch",
) -> SAUState:
    """``G`` and ``W`` for `model` from its saliency on `forget_dataset` (rows with ``question``/``answer`` or
    ``text``): the SAU selection that `SAUTrainer` makes at train start, for use with any Trainer through
    `sparsity_preserving` (``sau_state=...``). The saliency loss is the forget answers' NLL; the model is left
    as it was found."""
    from .data.qa import QACollator, tokenize_rows
    from .saliency import compute_saliency

    params, layouts, masks = resolve_sparsity_masks(model, sparsity_masks, "compute_sau_state")
    rows = tokenize_rows(forget_dataset, tokenizer, max_length, name="forget set", model=model)
    collate = QACollator(tokenizer)
    device = next(iter(params.values())).device
    batches = ({k_: v.to(device) for k_, v in collate(rows[i : i + batch_size]).items()}
               for i in range(0, len(rows), batch_size))

    def loss_fn(m, batch):
        from .objectives import forward_nll
        from .objectives.losses import mean_token_nll

        return mean_token_nll(*forward_nll(m, batch)[:2])

    saliency = compute_saliency(model, batches, loss_fn, params, granularity=granularity, show_progress=False)
    settings = {"sau_topk": k, "sau_alpha": alpha, "sau_topk_scope": scope, "sau_redistribution": redistribution,
                "saliency_granularity": granularity, "saliency_batch_size": batch_size, "saliency_loss": "forget_nll"}
    surviving = LazyMasks(saliency, lambda name: masks.get(name, saliency[name].device))
    return build_sau_state(saliency, surviving, k, alpha, scope, redistribution, settings=settings,
                           global_names=list(saliency), layouts=layouts)


__all__ = ["SparsityPreserving", "SparsityCallback", "sparsity_preserving", "compute_sau_state", "optimizer_keeps_zeros",
           "ZERO_KEEPING_OPTIMIZERS", "resolve_sparsity_masks", "zero_pruned_entries", "STATE_FILE"]
