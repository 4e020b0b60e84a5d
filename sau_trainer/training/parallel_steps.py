"""The mask passes of `SparsityPreserving` where the parameters are not whole tensors of one process: FSDP2 row
shards (the passes on local rows of ``M``, ``G`` and ``W``, no communication) and DeepSpeed ZeRO-2/3 (the pass inside
the engine's step, through DeepSpeed's gradient accessors). Each setup method also gives the trainer its backend
(`sau_trainer.parallel.backend`), which is all the rest of the glue asks about where tensors live."""

from __future__ import annotations

import torch

from ..core.bits import pack_planes
from ..core.fused import scale_update_, where_many_
from ..core.prunable import prunable_weights
from ..core.selection import apply_sau_
from ..parallel.backend import DeepSpeedBackend, ShardedBackend
from ..parallel.launch import deepspeed_stage
from ..parallel.shards import RowShard, is_sharded, local
from ..parallel.weights import write_model_copy
from .sparsity_setup import ZERO_KEEPING_OPTIMIZERS

# Update mode under DeepSpeed ZeRO: the mechanical reason it is refused (SPEC section 2, "Where W acts").
UPDATE_MODE_UNDER_ZERO = (
    "sau_redistribution_target='update' cannot run under DeepSpeed ZeRO-3: update mode scales each selected entry's "
    "optimizer step, p_old + W * (p_new - p_old), and DeepSpeed's engine steps every matrix at once inside the "
    "backward, so p_old of every masked matrix must be held through the step: under ZeRO-3 that is the whole model's "
    "fp32 weights gathered on every rank at every step, the memory ZeRO-3 exists to avoid (a learning rate per matrix "
    "is no way out: ZeRO flattens the parameter groups when the engine is built, before the saliency pass gives W). "
    "Use ZeRO-2 (the model is whole on every rank there, and update mode works), FSDP2 "
    "(recipes/accelerate/fsdp2.yaml), DDP or one process, or sau_redistribution_target='grad'.")


class ParallelSteps:
    """Mixin part of `SparsityPreserving` (the attributes it reads are set by `_attach_sparsity`)."""

    # ---- sharded parameters (FSDP2: sau_trainer.shards)
    def _refresh_parameters(self) -> None:
        """After the model was sharded: the prunable parameters are the sharded ones (same names)."""
        self._prunable = {n: w.param for n, w in prunable_weights(self.model).items()}

    def _setup_shards(self) -> bool:
        """At train start, once the model is prepared: if its parameters are FSDP2 shards, keep the local rows of
        ``M`` (and of ``G`` and ``W``) on the device as bit planes; the full masks stay on the CPU for the files
        and `sau_state.mask`. Returns whether the model is sharded."""
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
            if deepspeed_stage(self) == 3:
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
            old = self._snapshot_zero_update()
            out = step(*args, **kwargs)
            if old:
                self._scale_zero_update(old)
            return out

        engine.step = masked_step
        self.backend = DeepSpeedBackend(engine, self.args.world_size, self.args.process_index)
        return True

    @torch.no_grad()
    def _snapshot_zero_update(self) -> dict[str, torch.Tensor]:
        """``update`` mode under ZeRO-2, before the engine's step: the fp32 master weights of every parameter with a
        ``W`` (whole, from DeepSpeed's accessor; every rank calls it in the same order)."""
        if self.sau_state is None or not self._sau_update_mode():
            return {}
        from deepspeed.utils import safe_get_full_fp32_param

        params = self.masked_parameters()
        return {n: safe_get_full_fp32_param(params[n]).clone() for n in self.sau_state.weights if n in params}

    @torch.no_grad()
    def _scale_zero_update(self, old: dict[str, torch.Tensor]) -> None:
        """After the engine's step: ``p = p_old + W * (p - p_old)``, as one process does it (a scalar ``W`` of a plain
        matrix scales the whole matrix's step, as its learning-rate scaling does there, decoupled weight decay
        included; any other ``W`` the selected entries' step), written to the master partitions and the model."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        params, state = self.masked_parameters(), self.sau_state
        for name, o in old.items():
            p = params[name]
            new = safe_get_full_fp32_param(p).clone()
            w = state.weight(name).to(new.device)
            layout = self.layouts.get(name)
            if w.numel() == 1 and not (layout and layout.experts):
                new = o + w.float() * (new - o)
            else:
                scale_update_(new, o, state.planes(name, new.device), w)
            safe_set_full_fp32_param(p, new)
            write_model_copy(p, new)

    @torch.no_grad()
    def _mask_gradients_deepspeed(self) -> torch.Tensor | None:
        """``grad = where(M, grad, 0)`` or ``where(G, grad * W, 0)`` on the full gradients that DeepSpeed's accessors
        give (gathered under ZeRO-3; every rank calls them in the same order), written back to its partitions.
        Returns the norm of those gradients before masking (for `DivergenceGuard`), None if there were none."""
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

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
