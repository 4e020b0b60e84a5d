"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark: Measuring and
Reducing Malicious Use With Unlearning", arXiv 2403.03218), as open-unlearning computes it (METHODS.md 1.3).

The forget term steers the hidden states of one decoder block on the forget answers towards a fixed random
direction scaled by ``c``; the retain term keeps that block's hidden states on retain answers where the
starting model had them:

* control vector, drawn once at train start: ``c * u / ||u||`` with ``u ~ U[0, 1)^d`` (``d`` = hidden size;
  from a generator seeded with ``args.seed``), saved with every checkpoint and restored exactly on resume;
* masked activation MSE over the positions ``M`` whose *unshifted* label is supervised (QA: the answer tokens
  and EOS): ``D(H, G) = mean_i [ sum_{t in M_i} (1/d) ||H_it - G_it||^2 / |M_i| ]``, the per-example mean of
  the WMDP paper. **Departure from open-unlearning:** its code divides the ``[b]`` per-example sums ``S`` by a
  ``[b, 1]`` count, which broadcasts to ``[b, b]``, so it computes ``mean(S) x mean(1/|M|)`` (about 1% apart
  on rows of unequal length; equal when all rows have as many masked positions). ``rmu_mse_mean=
  "open-unlearning"`` reproduces its number;
* ``L_forget = D(h(f), c * u_hat)``, ``L_retain = D(h(r), h_ref(r))`` (``retain_loss="embed_diff"``, the
  default; ``nll`` and ``kl`` also work), ``L = gamma * L_forget + alpha * L_retain`` (1, 1).

Defaults follow open-unlearning's TOFU config (``configs/trainer/RMU.yaml``): c = 2, every parameter
trainable (``.*``), block index 7 (``hidden_states[8]``) where the model has more than 7 blocks, else the
middle block ``n // 2`` (so the defaults run on a 2-layer test model as on an 8B one; logged). OU's WMDP
setting is ``rmu_trainable_params=r"model\\.layers\\.(5|6|7)\\.mlp\\.down_proj\\.weight"`` (class default
c = 20; the original RMU used c = 6.5 and alpha = 1200 for Zephyr).

Trainable parameters: OU hands only the matching parameters to the optimizer but still computes gradients for
all of them (so its gradient-clipping norm includes frozen parameters' gradients); here the others are frozen
(``requires_grad=False``), which saves their gradients, and with SAU only the trainable ones get a saliency
and a selection ``G``. With the embed-diff retain term, the parameters that act after the hooked block (the
blocks above it, the final norm, an untied head) can receive no gradient from RMU's loss (in OU their gradients
stay None); they are frozen too, found from the autograd graph of one short forward: the same training, no
selection budget spent on them, and DDP then expects gradients only where there are some.

Memory: the embed-diff retain term needs the starting model's activations at the hooked block for whatever
retain batch is drawn, so a frozen reference stays in memory, but only the part that produces them: the
embeddings and the blocks up to the hooked one (about a quarter of an 8B Llama at block 7; no ``lm_head``).
Both models run full forward passes as in open-unlearning (the logits give the logged forget NLL).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..core.prunable import decoder_layers
from ..data.qa import IGNORE_INDEX
from .base import Objective
from .losses import mean_token_nll, sequence_nll
from .params import param

logger = logging.getLogger(__name__)

CONTROL = "rmu_control_vector"
OU_LAYER = 7


def default_layer(num_layers: int) -> int:
    """Open-unlearning's block 7 where the model has more than 7 blocks, else the middle one."""
    return OU_LAYER if num_layers > OU_LAYER else num_layers // 2


def control_vector(hidden_size: int, coeff: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``coeff * u / ||u||_2`` with ``u ~ U[0, 1)^hidden_size`` (fp32)."""
    u = torch.rand(hidden_size, generator=generator, dtype=torch.float32)
    return coeff * u / u.norm()


def masked_activation_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          mean: str = "example") -> torch.Tensor:
    """``mean_i [ S_i / |M_i| ]`` with ``S_i = sum_{t in M_i} mean_d (H - G)^2``, in fp32; `target` broadcasts.

    ``mean="open-unlearning"`` gives ``mean_i S_i x mean_i 1/|M_i|`` instead: open-unlearning divides the ``[b]``
    sums by a ``[b, 1]`` count, which broadcasts to ``[b, b]`` before its mean. The two agree when every row
    has the same number of masked positions (or b = 1) and differ otherwise.
    """
    sq = (hidden.float() - target.float()).square().mean(dim=-1)  # [b, T]
    mask = mask.to(sq.dtype)
    sums, counts = (sq * mask).sum(dim=1), mask.sum(dim=1).clamp_min(1)
    if mean == "open-unlearning":
        return sums.mean() * counts.reciprocal().mean()
    return (sums / counts).mean()


class _Capture:
    """Context manager: keeps the output of `module` (its first element if a tuple) from forward passes."""

    def __init__(self, module: nn.Module):
        self.module, self.value = module, None

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def _hook(self, module, inputs, output):
        self.value = output[0] if isinstance(output, (tuple, list)) else output

    def __exit__(self, *exc):
        self.handle.remove()


@dataclass
class RMUParams:
    layer: int | None = param(None, "Index (0-based) of the decoder block whose output is steered; None: 7 where "
                              "the model has more than 7 blocks (open-unlearning), else the middle block.",
                              flat="rmu_layer")
    steering_coeff: float = param(2.0, "Norm c of the control vector (open-unlearning's TOFU config: 2).",
                                  flat="rmu_steering_coeff")
    trainable_params: str = param(".*", "Regular expression, full-matched against parameter names; the others are "
                                  r"frozen ('.*': all, OU's TOFU setting; OU's WMDP setting: 'model\.layers\.(5|6|7)"
                                  r"\.mlp\.down_proj\.weight').", flat="rmu_trainable_params")
    mse_mean: str = param("example", "How the masked activation MSE averages rows: example (mean over rows of each "
                          "row's mean over its positions, as the WMDP paper) or open-unlearning (mean of the rows' "
                          "sums x mean of 1/positions, what its broadcast computes; differs on rows of unequal "
                          "length).", flat="rmu_mse_mean", choices=("example", "open-unlearning"))

    def __post_init__(self):
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)
                                       or self.layer < 0):
            raise ValueError(f"layer={self.layer!r} must be a block index >= 0, or None for the default.")
        if not self.steering_coeff > 0:
            raise ValueError(f"steering_coeff={self.steering_coeff!r} must be > 0.")
        try:
            re.compile(self.trainable_params)
        except (re.error, TypeError) as err:
            raise ValueError(f"trainable_params={self.trainable_params!r} is not a regular expression: {err}") \
                from None


class RMU(Objective):
    name = "rmu"
    label = "RMU"
    uses_retain = True
    default_retain_loss = "embed_diff"
    retain_losses = ("nll", "kl", "embed_diff")
    params = RMUParams

    @classmethod
    def state_settings(cls, params):
        return {"rmu_trainable_params": params.trainable_params}  # they are the saliency's targets

    def __init__(self, args):
        super().__init__(args)
        self.layer_index: int | None = self.params.layer
        self.trainable_names: set[str] | None = None
        self._layer: nn.Module | None = None
        self._ref_layer: nn.Module | None = None

    @property
    def needs_reference_model(self) -> bool:
        return self.retain_loss in ("embed_diff", "kl")

    # ------------------------------------------------------------------ set-up against the model
    def bind_model(self, model: nn.Module) -> None:
        """Resolve the hooked block and the trainable parameters; a clear error if either matches nothing."""
        layers = decoder_layers(model)
        n = len(layers)
        if self.layer_index is None:
            self.layer_index = default_layer(n)
            logger.info("RMU: hooking decoder block %d of %d (open-unlearning's 7 where a model has more than 7 "
                        "blocks, else the middle one; set rmu_layer to choose)", self.layer_index, n)
        if not 0 <= self.layer_index < n:
            raise ValueError(f"rmu_layer={self.layer_index} matches no decoder block: {type(model).__name__} has {n} "
                             f"blocks (0..{n - 1}). Pick one of those, or leave rmu_layer unset for the default.")
        self._layer = layers[self.layer_index]
        pattern = re.compile(self.params.trainable_params)
        names = {name for name, _ in model.named_parameters() if pattern.fullmatch(name)}
        if not names:
            example = next(iter(dict(model.named_parameters())), "")
            raise ValueError(f"rmu_trainable_params={self.params.trainable_params!r} matches no parameter of "
                             f"{type(model).__name__} (a full match against named_parameters() names such as "
                             f"{example!r}); use '.*' for all parameters.")
        if self.retain_loss == "embed_diff":
            # The loss sees only the hooked block's output: blocks above it, the final norm and an untied head can
            # get no gradient (as in OU, where their grads stay None). Freezing them trains exactly the same, keeps
            # them out of SAU's selection, and lets DDP expect gradients only where there are some.
            reach = _parameters_reaching(model, self._layer)
            if reach is not None:
                unreachable = names - reach
                names &= reach
                if not names:
                    raise ValueError(
                        f"rmu_trainable_params={self.params.trainable_params!r} matches only parameters that RMU's "
                        f"loss cannot reach: none of them acts before the output of block rmu_layer="
                        f"{self.layer_index}. Hook a later block or train earlier parameters.")
                if unreachable:
                    logger.info("RMU: %d matching parameters act after block %d and get no gradient from RMU's "
                                "loss; they stay frozen", len(unreachable), self.layer_index)
        self.trainable_names = names

    def build_reference(self, model: nn.Module) -> nn.Module:
        """The frozen starting model up to the hooked block (embed-diff), or a whole copy (``kl``)."""
        if self.retain_loss == "kl":
            return super().build_reference(model)
        ref, self._ref_layer = _truncated_copy(model, self.layer_index)
        return ref

    def prepare(self, trainer, ctx):
        if CONTROL not in ctx.tensors:
            config = trainer.model.config
            hidden = getattr(config, "get_text_config", lambda: config)().hidden_size
            g = torch.Generator().manual_seed(int(self.args.seed))
            ctx.tensors[CONTROL] = control_vector(hidden, self.params.steering_coeff, g)

    # ------------------------------------------------------------------ the loss
    def _hidden(self, model, layer, batch):
        with _Capture(layer) as cap:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return cap.value, getattr(out, "logits", None)

    def forget_term(self, model, forget, ctx):
        if CONTROL not in ctx.tensors:
            raise RuntimeError("RMU's control vector is not drawn: SAUTrainer draws it at train start.")
        hidden, logits = self._hidden(model, self._layer, forget)
        target = ctx.tensors[CONTROL].to(hidden.device, hidden.dtype)  # cast to the activation dtype, as OU does
        loss = masked_activation_mse(hidden, target, forget["labels"] != IGNORE_INDEX, self.params.mse_mean)
        return loss, mean_token_nll(*sequence_nll(logits, forget["labels"]))

    def retain_term(self, model, retain, ctx):
        if self.retain_loss != "embed_diff":
            return super().retain_term(model, retain, ctx)
        hidden, _ = self._hidden(model, self._layer, retain)
        with torch.no_grad():
            ref_hidden, _ = self._hidden(ctx.ref_model, self._ref_layer, retain)
        return masked_activation_mse(hidden, ref_hidden.to(hidden.dtype), retain["labels"] != IGNORE_INDEX,
                                     self.params.mse_mean)


@torch.enable_grad()
def _parameters_reaching(model: nn.Module, layer: nn.Module) -> set[str] | None:
    """Names of the parameters that the output of `layer` depends on, read from the autograd graph of one
    two-token forward in eval mode (no checkpointing, no backward); None where that forward fails."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        ids = torch.zeros(1, 2, dtype=torch.long, device=device)
        with _Capture(layer) as cap:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as err:  # an unusual model: then every matching parameter trains, as in OU
        logger.warning("RMU: could not trace which parameters reach the hooked block (%s); training all matches.", err)
        return None
    finally:
        model.train(was_training)
    found, seen, stack = set(), set(), [cap.value.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # AccumulateGrad: a leaf, i.e. a parameter
        if var is not None and id(var) in names:
            found.add(names[id(var)])
        stack.extend(f for f, _ in fn.next_functions)
    return found


def _truncated_copy(model: nn.Module, layer_index: int) -> tuple[nn.Module, nn.Module]:
    """A frozen copy of the model's decoder (embeddings, blocks ``0..layer_index``, final norm, no head), and
    its block `layer_index`. A copy of the whole model where ``get_decoder()`` does not hold the blocks.
    """
    layers = decoder_layers(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    attr = None
    if isinstance(decoder, nn.Module):
        attr = next((name for name, child in decoder.named_children() if child is layers), None)
    if attr is None:
        logger.warning("RMU: could not isolate the decoder of %s; the reference is a full copy.", type(model).__name__)
        ref = copy.deepcopy(model)
        hooked = decoder_layers(ref)[layer_index]
    else:
        setattr(decoder, attr, nn.ModuleList(list(layers)[: layer_index + 1]))
        try:
            ref = copy.deepcopy(decoder)
        finally:
            setattr(decoder, attr, layers)
        hooked = getattr(ref, attr)[layer_index]
    ref.eval()
    ref.requires_grad_(False)
    return ref, hooked

