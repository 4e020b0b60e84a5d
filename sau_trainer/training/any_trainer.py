"""Sparsity preserved (and SAU) for any `transformers.Trainer` subclass: `sparsity_preserving(TrainerClass)` and
`compute_sau_state`, which gives such a Trainer the ``G`` and ``W`` that `SAUTrainer` computes at train start."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import SAU_SETTING_FIELDS, field_default
from ..data.qa import QACollator, tokenize_rows
from ..objectives import forward_nll
from ..objectives.losses import mean_token_nll
from .masks import LazyMasks, SparsityMasks
from .precision import apply_precision_plan, check_precision
from .saliency import compute_saliency
from .sparsity import SparsityPreserving
from .sparsity_setup import resolve_sparsity_masks, zero_pruned_entries
from .state import SAUState, build_sau_state


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
    k: float = field_default("sau_topk"),
    alpha: float = field_default("sau_alpha"),
    scope: str = field_default("sau_topk_scope"),
    redistribution: str = field_default("sau_redistribution"),
    batch_size: int = 8,
    max_length: int = field_default("max_length"),
    granularity: str = field_default("saliency_granularity"),
) -> SAUState:
    """``G`` and ``W`` for `model` from its saliency on `forget_dataset` (rows with ``question``/``answer`` or
    ``text``): the SAU selection that `SAUTrainer` makes at train start, for use with any Trainer through
    `sparsity_preserving` (``sau_state=...``). The saliency loss is the forget answers' NLL; the model is left
    as it was found."""
    params, layouts, masks = resolve_sparsity_masks(model, sparsity_masks, "compute_sau_state")
    rows = tokenize_rows(forget_dataset, tokenizer, max_length, name="forget set", model=model)
    collate = QACollator(tokenizer)
    device = next(iter(params.values())).device
    batches = ({k_: v.to(device) for k_, v in collate(rows[i : i + batch_size]).items()}
               for i in range(0, len(rows), batch_size))

    def loss_fn(m, batch):
        return mean_token_nll(*forward_nll(m, batch)[:2])

    saliency = compute_saliency(model, batches, loss_fn, params, granularity=granularity, show_progress=False)
    given = dict(sau_topk=k, sau_alpha=alpha, sau_topk_scope=scope, sau_redistribution=redistribution,
                 saliency_granularity=granularity, saliency_batch_size=batch_size, saliency_loss="forget_nll")
    settings = {name: given[name] for name in SAU_SETTING_FIELDS if name in given}  # SAUConfig.sau_settings' keys
    surviving = LazyMasks(saliency, lambda name: masks.get(name, saliency[name].device))
    return build_sau_state(saliency, surviving, k, alpha, scope, redistribution, settings=settings,
                           global_names=list(saliency), layouts=layouts)
