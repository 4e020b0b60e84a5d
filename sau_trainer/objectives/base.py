"""The objective interface: a forget term, an optional retain term, their weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .losses import mean_token_nll, retain_kl, sequence_nll


@dataclass
class ObjectiveContext:
    """What an objective may need besides the batches: reference NLLs of the forget set, a reference model.

    `tensors` holds what an objective computes once before training (`Objective.prepare`); SAUTrainer saves
    them with every checkpoint and restores them on resume. `epoch` is the current epoch (0-based).
    """

    ref_forget_nll_sum: torch.Tensor | None = None
    ref_model: torch.nn.Module | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0


def forward_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Per-sequence answer NLL sum and token count, and the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll_sum, count = sequence_nll(logits, batch["labels"])
    return nll_sum, count, logits


class Objective:
    """Base class: ``loss = forget_weight * forget_term + retain_weight * retain_term``."""

    name = ""
    label = ""  # display name in reports (default: `name`)
    uses_retain = False
    needs_reference_nll = False
    default_forget_weight = 1.0
    default_retain_weight = 1.0
    default_retain_loss = "nll"
    retain_losses: tuple[str, ...] = ("nll", "kl")  # the retain terms it offers (SAUConfig.retain_loss)
    trainable_names: set[str] | None = None  # set by `bind_model` to train only these parameters; None: all
    #: the objective's own settings, a dataclass (fields with `help`); an instance is `self.params`, set from
    #: ``SAUConfig(objective_args={name: {...}})`` or a field's flat SAUConfig name (`objectives.params`)
    params: Any = None

    @classmethod
    def state_settings(cls, params: Any) -> dict:
        """Settings of this objective that shape the SAU state (G and W) whatever the saliency loss, saved with it
        and compared on resume (`SAUConfig.sau_settings`). Empty: none."""
        return {}

    @classmethod
    def check_config(cls, params: Any, config: Any) -> list[str]:
        """Problems of this objective's `params` together with the run's other settings (`config`: SAUConfig's
        values, e.g. ``retain_loss``), one line each; SAUConfig asks the objective it runs. Empty: none."""
        return []

    def __init__(self, args: Any):
        from .params import build_params

        self.params = build_params(type(self), (getattr(args, "objective_args", None) or {}).get(self.name) or {})
        self.forget_weight = args.forget_weight if args.forget_weight is not None else self.default_forget_weight
        self.retain_weight = args.retain_weight if args.retain_weight is not None else self.default_retain_weight
        self.retain_loss = args.retain_loss or self.default_retain_loss
        self.args = args

    @property
    def needs_reference_model(self) -> bool:
        return self.uses_retain and self.retain_loss == "kl"

    @classmethod
    def definitions(cls, args: dict) -> dict[str, int]:
        """Versions of the definitions a run with these settings (SAUConfig fields by name; absent: default)
        computes, for those that changed since they were first released; empty where none did.

        The pipeline puts them in an unlearning task's settings, so a changed definition changes the task's
        hash and an output directory recomputes exactly the runs it affects (a settings value that stays at
        its default is not in the hash). Bump a version here whenever a default computation changes.
        """
        out = {}
        if cls.uses_retain and (args.get("retain_loss") or cls.default_retain_loss) == "kl":
            out["retain_kl"] = 2  # 2: every non-padding position of the retain sequence (1: the answer's)
        return out

    def setup(self, forget_dataset: Any, tokenizer: Any) -> None:
        """Called by SAUTrainer with the raw forget rows before the model changes: check and keep what is needed."""

    def prepare(self, trainer: Any, ctx: ObjectiveContext) -> None:
        """Called once at train start (after a resume too): compute reference outputs into ``ctx.tensors``."""

    def on_epoch_end(self, trainer: Any, ctx: ObjectiveContext) -> None:
        """Called by SAUTrainer at the end of every training epoch (PDU's per-epoch dual step)."""

    def bind_model(self, model: torch.nn.Module) -> None:
        """Called by SAUTrainer with the model before it changes: check settings that depend on it (layers,
        parameter names) and set `trainable_names` where only some parameters may train."""

    def build_reference(self, model: torch.nn.Module) -> torch.nn.Module:
        """The frozen reference: a copy of the starting model (an objective may keep only the part it needs)."""
        import copy

        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
        return ref

    def forget_term(self, model, forget: dict, ctx: ObjectiveContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (forget term, mean answer NLL of the forget batch, or None where it is not computed)."""
        raise NotImplementedError

    def retain_term(self, model, retain: dict, ctx: ObjectiveContext) -> torch.Tensor:
        if self.retain_loss == "kl":
            logits = model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
            with torch.no_grad():
                ref_logits = ctx.ref_model(input_ids=retain["input_ids"], attention_mask=retain["attention_mask"]).logits
            return retain_kl(logits, ref_logits, retain, self.args.retain_kl_positions)
        nll_sum, count, _ = forward_nll(model, retain)
        return mean_token_nll(nll_sum, count)

    def __call__(self, model, forget: dict, retain: dict | None, ctx: ObjectiveContext):
        """Returns (loss, logs) with the forget and retain terms logged separately."""
        f_term, f_nll = self.forget_term(model, forget, ctx)
        loss = self.forget_weight * f_term
        logs = {"forget_loss": f_term.detach()}
        if f_nll is not None:
            logs["forget_nll"] = f_nll.detach()
        if self.uses_retain:
            if retain is None:
                raise ValueError(f"Objective {self.name!r} needs a retain set: pass retain_dataset=...")
            r_term = self.retain_term(model, retain, ctx)
            loss = loss + self.retain_weight * r_term
            logs["retain_loss"] = r_term.detach()
        return loss, logs
