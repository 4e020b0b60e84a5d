"""Precision: make every optimizer update reach the weights (SPEC section 2, "Precision").

The problem. A bf16 weight has 8 significant bits: around ``|w|`` its spacing (one ULP) is about
``|w| * 2**-7``, and round-to-nearest drops any change smaller than half of it. An Adam step is about
``lr`` per entry, so with bf16 weights and a plain optimizer every weight with ``|w| > ~lr * 2**8`` stays
bit-identical; at lr 1e-5 that is every survivor of 50% magnitude pruning (measured: 0.000 of them
changed after 10 steps). Unlearning then silently does nothing, plain and SAU alike.

Three ways to make the updates land, each one chosen by `SAUConfig` fields:

* **fp32 master weights** (``low_precision_weights="upcast"``, the default correction): the trainable
  low-precision parameters are cast to fp32 before training, in place (the `Parameter` objects keep their
  identity, so tied weights stay tied and an optimizer built over them stays valid); with ``bf16=True`` the
  forward and backward still run in bf16 under autocast. Exact, no extra dependency, 2 more bytes per
  parameter for the weights and 2 for the gradients.
* **Kahan-compensated updates** (``compensated_optimizer="kahan_adamw"``, torch-optimi's AdamW with
  ``kahan_sum=True``): weights stay bf16; a bf16 buffer keeps the part of each update that rounding drops
  and adds it back at the next step (Kahan, "Further remarks on reducing truncation errors", 1965;
  low-precision training use as in torchdistX's AnyPrecisionAdamW and Benjamin Warner's optimi).
* **Stochastic rounding** (``compensated_optimizer="sr_adamw"`` / ``"sr_adamw8bit"``, torchao's AdamW with
  ``bf16_stochastic_round=True``): the fp32 result of each step is rounded up or down at random with
  probabilities that make the rounding unbiased, so small updates land in expectation (Gupta et al.,
  "Deep Learning with Limited Numerical Precision", 2015; Zamirai et al., "Revisiting BFloat16 Training",
  2020). The 8-bit variant keeps blockwise-quantised Adam states (Dettmers et al., "8-bit Optimizers via
  Block-wise Quantization", 2022).

Before training, `plan_precision` decides (a pure function) whether the configuration would lose updates
(low-precision trainable weights with an optimizer that does not compensate them) and what to do:
correct it (upcast, logged), refuse it with a message that names the fixes, or keep it when the user opted
out (warned). After the first optimizer step(s) `UpdateProbe` measures, on a fixed sample of selected
entries per matrix, the fraction that changed (weights plus a Kahan buffer), and `UpdateCheckCallback`
logs it and warns when it is far below 1.

The compensated optimizers' registry and how to tell one: `sau_trainer.training.compensated`.
The module knows nothing about `SAUTrainer`: `apply_precision_policy` takes a model, the arguments and the
optimizer choice, and the callback takes callables, so other Trainers can share it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from ..progress import log_once
from .compensated import (
    COMPENSATED_OPTIMIZERS,
    KAHAN,
    OPTIMIZER_CHOICES,
    STOCHASTIC_ROUNDING,
    Compensation,
    compensation_buffer,
    compensation_of,
    unwrap_optimizer,
)

logger = logging.getLogger("sau_trainer.precision")  # its name before the move: users and tests set its level

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)
POLICIES = ("upcast", "error", "keep")
# A step is "far below 1" when fewer than this fraction of the probed selected entries changed.
WARN_BELOW = 0.5


# --------------------------------------------------------------------------- the decision (pure)
@dataclass
class PrecisionPlan:
    """What `plan_precision` decided: ``action`` is "none", "upcast", "keep" or "refuse"."""

    action: str
    names: list[str]  # the trainable low-precision parameters the action is about
    dtypes: dict[str, int] = dataclasses.field(default_factory=dict)  # dtype name -> number of parameters
    message: str = ""
    autocast: bool = False
    compensation: Compensation = dataclasses.field(default_factory=Compensation)

    @property
    def loses_updates(self) -> bool:
        return self.action in ("keep", "refuse")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan_precision(
    params: Mapping[str, torch.Tensor],
    policy: str,
    compensation: Compensation,
    autocast: bool,
    update_mode: bool | Collection[str] = False,
    optimizer_label: str = "the optimizer",
) -> PrecisionPlan:
    """Decide what to do with the trainable parameters `params` (name -> tensor) before training.

    A parameter loses updates when its dtype is bf16 or fp16 and `compensation` does not cover that
    dtype; in SAU's ``update`` mode it does even then where the step is rescaled by ``W`` after the optimizer
    (re-rounded to nearest): `update_mode` is True for every parameter, or the names of those parameters (see
    `update_mode_rescaled`). `policy`: ``upcast`` casts those parameters to fp32 (all floating
    parameters of the model when no autocast is on: see `upcast_parameters`), ``error`` refuses,
    ``keep`` trains them as they are (the user's explicit opt-out).
    """
    if policy not in POLICIES:
        raise ValueError(f"low_precision_weights={policy!r} is not allowed; choose one of {list(POLICIES)}.")
    rescaled = set(params) if update_mode is True else set(update_mode or ())
    lossy = [n for n, p in params.items()
             if p.dtype in LOW_PRECISION_DTYPES and (n in rescaled or not compensation.covers(p.dtype))]
    if not lossy:
        return PrecisionPlan("none", [])
    counts: dict[str, int] = {}
    for n in lossy:
        key = _dtype_name(params[n].dtype)
        counts[key] = counts.get(key, 0) + 1
    what = ", ".join(f"{c} {d}" for d, c in counts.items())
    why = (f"{what} trainable parameter(s) (first: {lossy[0]!r}) with {optimizer_label}, which rounds each step "
           "to the nearest representable value: a step of about lr is below half a bf16 ULP for every weight "
           "with |w| > ~lr * 2^8 (at lr 1e-5 every survivor of 50% magnitude pruning) and is lost")
    if any(n in rescaled and compensation.covers(params[n].dtype) for n in lossy):
        why += (" (sau_redistribution_target='update' rescales the step by W after the optimizer and rounds it "
                "to nearest, so compensation does not cover it)")
    fixes = ("low_precision_weights='upcast' (fp32 master weights, with bf16=True for bf16 compute), "
             f"compensated_optimizer={'|'.join(repr(k) for k in COMPENSATED_OPTIMIZERS)} (bf16 weights, "
             "compensated updates), or load the model in float32")
    if policy == "error":
        return PrecisionPlan("refuse", lossy, counts,
                             f"Precision: refusing to train, updates would be lost: {why}. Fix: {fixes}; "
                             "or low_precision_weights='keep' to train anyway.")
    if policy == "keep":
        return PrecisionPlan("keep", lossy, counts,
                             f"Precision: low_precision_weights='keep': training anyway although updates will "
                             f"be lost: {why}. Fix: {fixes}.")
    scope = "these parameters" if autocast else "every floating-point parameter (no bf16/fp16 autocast is on)"
    return PrecisionPlan("upcast", lossy, counts,
                         f"Precision: casting {scope} to float32 master weights, because {why}. "
                         f"{'Forward and backward still run under autocast. ' if autocast else ''}"
                         "Costs 2 extra bytes per parameter for weights and 2 for gradients; to keep bf16 weights "
                         f"choose compensated_optimizer={'|'.join(repr(k) for k in COMPENSATED_OPTIMIZERS)}.")


@torch.no_grad()
def upcast_parameters(model: torch.nn.Module, names: Iterable[str], everything: bool = False) -> int:
    """Cast the named parameters (or, with `everything`, every floating-point parameter) to float32 in place.

    ``p.data = p.data.float()`` keeps each `Parameter` object, so tied weights stay tied and an optimizer
    that already holds the parameters (with no state yet) keeps working. Returns how many were cast.
    """
    names = set(names)
    done, seen = 0, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or not p.is_floating_point() or p.dtype == torch.float32:
            continue
        if everything or name in names:
            seen.add(id(p))
            p.data = p.data.float()
            done += 1
    return done


def autocast_enabled(args) -> bool:
    """Whether the Trainer computes under bf16/fp16 autocast (``bf16=True`` or ``fp16=True``)."""
    return bool(getattr(args, "bf16", False) or getattr(args, "fp16", False))


def _optimizer_has_state(optimizer: Any, params: Iterable[torch.Tensor]) -> bool:
    state = getattr(unwrap_optimizer(optimizer), "state", {})
    return any(len(state.get(p, {})) for p in params)


def update_mode_rescaled(params: Iterable[str], layouts: Mapping[str, Any], redistribution: str) -> set[str]:
    """Of the parameters that get ``W`` (`params`: names), those whose step SAU's ``update`` mode rescales after the optimizer, by a dense pass that rounds
    to nearest (so a compensating optimizer's buffer does not cover it): all of them for per-row and
    per-parameter ``W``, and the fused expert tensors (one ``W`` per expert) for per-matrix ``W``. A matrix
    with a single ``W`` gets it as a learning-rate scale of its parameter group instead, which the optimizer
    itself applies (compensation included); ``none`` has no ``W`` at all."""
    if redistribution in ("row", "param"):
        return set(params)
    if redistribution == "matrix":
        return {n for n in params if getattr(layouts.get(n), "experts", False)}
    return set()


def check_precision(
    model: torch.nn.Module,
    args,
    optimizer: Any = None,
    optimizer_cls_and_kwargs: tuple[type, dict] | None = None,
    update_mode: bool | Collection[str] = False,
    exclude: Iterable[str] = (),
    policy: str | None = None,
    compensated: str | None = None,
) -> PrecisionPlan:
    """Decide, before training and before anything changes, what to do with `model`'s trainable weights.

    The optimizer is `optimizer` (a user's instance), else `optimizer_cls_and_kwargs`, else
    ``args.compensated_optimizer`` (decided from the registry, without importing it), else the Trainer's
    ``args.optim`` (no Trainer optimizer compensates, except ``adamw_anyprecision`` with
    ``use_kahan_summation=True`` in ``optim_args``). ``args.low_precision_weights`` chooses the policy;
    `exclude` names parameters that will be frozen. `policy` and `compensated` stand in for
    ``args.low_precision_weights`` and ``args.compensated_optimizer`` where `args` has no such fields (a plain
    `TrainingArguments`). Raises ValueError for a refusal (nothing changed).
    """
    policy = policy if policy is not None else getattr(args, "low_precision_weights", "upcast")
    compensated = compensated if compensated is not None else getattr(args, "compensated_optimizer", "none")
    if compensated not in OPTIMIZER_CHOICES:
        raise ValueError(f"compensated_optimizer={compensated!r} is not known; "
                         f"choose one of {list(OPTIMIZER_CHOICES)}.")
    exclude = set(exclude)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and n not in exclude}
    if optimizer is not None:
        comp = compensation_of(optimizer)
        label = f"the given optimizer ({comp.source})"
    elif optimizer_cls_and_kwargs is not None:
        comp = compensation_of(cls=optimizer_cls_and_kwargs[0], kwargs=optimizer_cls_and_kwargs[1])
        label = comp.source
    elif compensated != "none":
        spec = COMPENSATED_OPTIMIZERS[compensated]
        comp = Compensation(spec.method, spec.dtypes, spec.name)
        label = f"compensated_optimizer={spec.name!r}"
    else:
        optim = getattr(args, "optim", "")
        optim = str(getattr(optim, "value", optim))
        kahan = optim == "adamw_anyprecision" and "use_kahan_summation=true" in str(
            getattr(args, "optim_args", "") or "").replace(" ", "").lower()
        comp = Compensation(KAHAN, (torch.bfloat16,), optim) if kahan else Compensation(source=optim)
        label = f"optim={optim!r}"
    autocast = autocast_enabled(args)
    plan = plan_precision(trainable, policy, comp, autocast,
                          update_mode=update_mode, optimizer_label=label)
    plan.autocast = autocast
    plan.compensation = comp
    if plan.action == "refuse":
        raise ValueError(plan.message)
    if plan.action == "upcast" and optimizer is not None and _optimizer_has_state(
            optimizer, [trainable[n] for n in plan.names]):
        raise ValueError(
            "Precision: the given optimizer already holds state for low-precision parameters, so they cannot be "
            f"upcast to float32 in place ({plan.names[0]!r}). Build the optimizer after loading the model in "
            "float32, use a compensated optimizer, or low_precision_weights='keep'.")
    if plan.action == "none":
        plan.names = [n for n, p in trainable.items() if p.dtype in LOW_PRECISION_DTYPES]  # compensated ones
    return plan


def apply_precision_plan(model: torch.nn.Module, plan: PrecisionPlan) -> None:
    """Carry out a `check_precision` decision: upcast (logged as a warning: it changes memory), warn, or log."""
    if plan.action == "upcast":
        upcast_parameters(model, plan.names, everything=not plan.autocast)
        logger.warning(plan.message)
    elif plan.action == "keep":
        logger.warning(plan.message)
    elif plan.names:
        logger.info("Precision: %d low-precision trainable parameters, compensated by %s (%s).",
                    len(plan.names), plan.compensation.source, plan.compensation.method)


def apply_precision_policy(model: torch.nn.Module, args, **kwargs: Any) -> PrecisionPlan:
    """`check_precision` then `apply_precision_plan`: the one call a Trainer needs before training."""
    plan = check_precision(model, args, **kwargs)
    apply_precision_plan(model, plan)
    return plan


# --------------------------------------------------------------------------- after the first steps
class UpdateProbe:
    """A fixed sample of selected entries per parameter, and the fraction of them that an update changed.

    `sample` draws ``draws`` flat indices per parameter (seeded, any shape: 2-D matrices and 3-D fused
    expert tensors alike) and keeps at most ``per_param`` of those that are selected (``G`` for SAU, ``M``
    for plain), with their current values: a few hundred bytes per matrix, never a copy of the model.
    `changed_fraction` compares the current values (plus a Kahan buffer, where the optimizer keeps one:
    there the update is held partly in the buffer) with the sample.
    """

    def __init__(self):
        self.index: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def sample(self, params: Mapping[str, torch.Tensor], selected: Callable[[str], torch.Tensor | None],
               per_param: int = 64, draws: int = 512, seed: int = 0, optimizer: Any = None) -> UpdateProbe:
        g = torch.Generator().manual_seed(seed)
        for name, p in params.items():
            n = p.numel()
            if n == 0:
                continue
            idx = torch.randint(0, n, (min(draws, n),), generator=g).unique()
            mask = selected(name)
            if mask is not None:
                idx = idx[mask.reshape(-1)[idx.to(mask.device)].cpu()]
            idx = idx[:per_param]
            if idx.numel():
                self.index[name] = idx
                self.values[name] = self._effective(p, idx, optimizer)
        return self

    @staticmethod
    def _effective(p: torch.Tensor, idx: torch.Tensor, optimizer: Any) -> torch.Tensor:
        flat_idx = idx.to(p.device)
        value = p.detach().reshape(-1)[flat_idx].double()
        buf = compensation_buffer(optimizer, p) if optimizer is not None else None
        if buf is not None:
            value = value + buf.detach().reshape(-1)[flat_idx].double()
        return value.cpu()

    def __len__(self) -> int:
        return sum(v.numel() for v in self.values.values())

    @torch.no_grad()
    def changed_fraction(self, params: Mapping[str, torch.Tensor], optimizer: Any = None) -> float | None:
        """Fraction of the probed entries whose (effective) value differs from the sample; None if empty."""
        total = changed = 0
        for name, old in self.values.items():
            now = self._effective(params[name], self.index[name], optimizer)
            changed += int((now != old).sum())
            total += old.numel()
        return changed / total if total else None


class UpdateCheckCallback(TrainerCallback):
    """Logs the fraction of probed selected entries changed by the first optimizer step(s); warns if far below 1.

    Steps taken with a learning rate of 0 (the first step of a linear warm-up) are not counted. With
    stochastic rounding a small step changes an entry only with probability ``|step| / ULP``, so a low
    fraction is expected there: it is logged, not warned about.

    Args:
        params: callable returning name -> parameter (the matrices whose selected entries are probed).
        selected: callable name -> bool mask of the selected entries (or None: all entries).
        optimizer: callable returning the optimizer (read at the first step).
        steps: how many optimizer steps with lr > 0 to wait before the check (0 disables it).
        log: callable taking a dict of metrics (e.g. `Trainer.log`).
        skipped: callable saying whether the step just taken was skipped (`skip_nonfinite_steps`): not counted.
    """

    def __init__(self, params: Callable[[], Mapping[str, torch.Tensor]],
                 selected: Callable[[str], torch.Tensor | None], optimizer: Callable[[], Any], steps: int = 1,
                 log: Callable[[dict], None] | None = None, seed: int = 0,
                 skipped: Callable[[], bool] | None = None):
        self.params, self.selected, self.optimizer, self.skipped = params, selected, optimizer, skipped
        self.steps, self.log, self.seed = steps, log, seed
        self.probe: UpdateProbe | None = None
        self.counted = 0
        self.result: float | None = None
        self.done = steps <= 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.done and self.probe is None:
            self.probe = UpdateProbe().sample(self.params(), self.selected, seed=self.seed,
                                              optimizer=self.optimizer())

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.done or self.probe is None or (self.skipped is not None and self.skipped()):
            return
        optimizer = unwrap_optimizer(self.optimizer())
        if any(float(g["lr"]) > 0 for g in optimizer.param_groups):
            self.counted += 1
        if self.counted >= self.steps:
            self._check()

    def on_train_end(self, args, state, control, **kwargs):
        if not self.done and self.probe is not None and self.counted:
            self._check()

    def _check(self) -> None:
        self.done = True
        optimizer = self.optimizer()
        fraction = self.probe.changed_fraction(self.params(), optimizer)
        if fraction is None:
            return
        self.result = fraction
        comp = compensation_of(optimizer)
        # once per process (each run's fraction is a logged metric)
        log_once(logger, logging.INFO, "Precision: %.4f of %d probed selected entries changed after %d optimizer "
                 "step(s) with lr > 0 (precision/changed_fraction in each run's logged metrics).",
                 fraction, len(self.probe), self.counted, key="update probe")
        if self.log is not None:
            self.log({"precision/changed_fraction": round(fraction, 6)})
        if fraction < WARN_BELOW and comp.method != STOCHASTIC_ROUNDING:
            logger.warning(
                "Precision: only %.4f of the probed selected entries changed after %d optimizer step(s): updates "
                "are not reaching the weights (low-precision weights with a rounding optimizer, a learning rate "
                "too small for the weights' precision, or zero gradients). See low_precision_weights and "
                "compensated_optimizer.", fraction, self.counted)
