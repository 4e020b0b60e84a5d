"""``update`` mode (``sau_redistribution_target="update"``, SPEC section 2 "Where W acts"): the optimizer's step
of selected entries is scaled by ``W``. A scalar ``W`` becomes a learning-rate scale of the matrix's own parameter
group for the step; any other ``W`` a snapshot before the step and `core.fused.scale_update_` after it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..parallel.shards import local
from .compensated import unwrap_optimizer


class UpdateModeSteps:
    """Mixin part of `SparsityPreserving`: the snapshot and learning-rate groups around one optimizer step."""

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
