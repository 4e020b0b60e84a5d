"""Robustness of forgetting (SPEC section 5): the attacks that may bring forgotten data back.

A deployer needs to know whether an unlearned model *stays* forgotten once it is compressed or
finetuned again. Published work shows forgotten knowledge coming back after 4-bit quantization
(Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025: MUSE, Llama-2-7B,
from 21% to 83% of the forget knowledge retained), after pruning (the motivating observation of the
SAU paper, arXiv 2602.00577) and after a few steps of finetuning on a small related set (the
relearning attacks of Hu et al., "Jogging the Memory of Unlearned LLMs Through Targeted Relearning
Attacks", 2024, and Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", 2024).

This module holds what does not depend on the pipeline:

- the attack names of a recipe (`parse_attack`, `ATTACKS`): ``quant-int8``, ``quant-int4``, ``bnb-8bit``,
  ``bnb-nf4``, ``prune-<method>-<percent>`` / ``prune-<method>-<N>of<M>`` and ``relearn``;
- the quantizers, pure tensor functions (`quantize_rtn`, `quantize_bnb`) that return the weights a
  quantized deployment computes with (quantize, then dequantize), and `quantize_model` that applies one
  to every prunable matrix (the decoder blocks' linear weights; embeddings, ``lm_head`` and norms stay as
  they are, as weight-only quantization of LLMs usually leaves them);
- the relearning set (`relearn_selection`) and the evaluation splits it is judged on (`heldout_splits`).

Every quantizer keeps an exact zero an exact zero (a pruned weight stays pruned): round-to-nearest is
symmetric (no zero point), NF4 has an exact zero code, LLM.int8() is symmetric; `quantize_model` also
re-applies the zeros and checks it.
"""

from __future__ import annotations

import copy
import difflib
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .core.prunable import prunable_parameters
from .pruning import PRUNERS

RTN_GROUP_SIZE = 128


# ----------------------------------------------------------------------------------------- attack names
@dataclass(frozen=True)
class Attack:
    """One entry of ``evaluate.robustness``: `kind` is quant, bnb, prune or relearn."""

    name: str
    kind: str
    help: str
    bits: int | None = None  # quant: 8 or 4
    bnb_type: str | None = None  # bnb: "int8" or "nf4"
    method: str | None = None  # prune: a key of PRUNERS
    sparsity: float | None = None  # prune, unstructured
    structure: str = "unstructured"  # prune: "unstructured" or "N:M"

    @property
    def prune_id(self) -> str | None:
        """The pipeline's name of the pruning (``magnitude-50``, ``wanda-2of4``), for prune attacks."""
        if self.kind != "prune":
            return None
        if self.structure != "unstructured":
            return f"{self.method}-{self.structure.replace(':', 'of')}"
        return f"{self.method}-{round(self.sparsity * 100):g}"


# The fixed names; ``prune-<method>-<percent>`` and ``prune-<method>-<N>of<M>`` are parsed by `parse_attack`.
ATTACKS: dict[str, Attack] = {
    "quant-int8": Attack("quant-int8", "quant", "round-to-nearest int8, symmetric, groups of 128 (torch)", bits=8),
    "quant-int4": Attack("quant-int4", "quant", "round-to-nearest int4, symmetric, groups of 128 (torch)", bits=4),
    "bnb-8bit": Attack("bnb-8bit", "bnb", "bitsandbytes LLM.int8() weights (row-wise absmax int8)",
                       bnb_type="int8"),
    "bnb-nf4": Attack("bnb-nf4", "bnb", "bitsandbytes 4-bit NF4 weights (blocks of 64)", bnb_type="nf4"),
    "relearn": Attack("relearn", "relearn", "plain finetuning on part of the forget set, then evaluation"),
}
_PRUNE = re.compile(r"^prune-([a-z0-9_]+)-(?:(\d{1,2})|(\d+)of(\d+))$")


def attack_names_help() -> str:
    return ", ".join(ATTACKS) + ", prune-<method>-<percent> (e.g. prune-magnitude-50), prune-<method>-<N>of<M> " \
        "(e.g. prune-wanda-2of4)"


def parse_attack(name: str) -> Attack:
    """The `Attack` named `name`, or a ValueError that says what is accepted."""
    if not isinstance(name, str):
        raise ValueError(f"a robustness entry is a name, got {name!r}; one of {attack_names_help()}")
    if name in ATTACKS:
        return ATTACKS[name]
    m = _PRUNE.match(name)
    if m:
        method = m.group(1)
        if method not in PRUNERS:
            raise ValueError(f"{name!r}: {method!r} is not a pruning method; one of {sorted(PRUNERS)}")
        if m.group(2) is not None:
            pct = int(m.group(2))
            if not 0 < pct < 100:
                raise ValueError(f"{name!r}: the percentage must be between 1 and 99")
            return Attack(name, "prune", f"{method} pruning to {pct}% (unstructured)", method=method,
                          sparsity=pct / 100)
        n, k = int(m.group(3)), int(m.group(4))
        if not 0 < n < k:
            raise ValueError(f"{name!r}: N:M sparsity needs 0 < N < M (e.g. prune-{method}-2of4)")
        return Attack(name, "prune", f"{method} {n}:{k} pruning", method=method, structure=f"{n}:{k}")
    near = difflib.get_close_matches(name, [*ATTACKS, "prune-magnitude-50", "prune-wanda-2of4"], n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"{name!r} is not a robustness attack; use one of {attack_names_help()}{hint}")


# ----------------------------------------------------------------------------------------- quantizers
def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int = RTN_GROUP_SIZE) -> torch.Tensor:
    """Round-to-nearest weight quantization, returned dequantized (the values a quantized model computes with).

    Each row of `weight` (the last dimension is the input dimension) is cut into groups of `group_size`
    consecutive entries (the last group of a row may be shorter). Per group, symmetric absmax scaling:
    ``scale = max|w| / (2**(bits-1) - 1)``, ``q = clamp(round(w / scale), -2**(bits-1), 2**(bits-1) - 1)``,
    result ``q * scale``. No zero point, so ``w == 0`` gives exactly 0, and an all-zero group stays zero.
    Computed in fp32 (rounding half to even, torch.round), returned in `weight`'s dtype and shape.
    """
    if bits < 2 or bits > 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if weight.ndim < 2:
        raise ValueError(f"quantize_rtn takes a matrix (or a stack of them), got shape {tuple(weight.shape)}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    cols = w.shape[-1]
    pad = (-cols) % group_size
    rows = w.reshape(-1, cols)
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))  # zeros change no group's absmax
    groups = rows.reshape(rows.shape[0], -1, group_size)
    scale = groups.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(groups / safe), -qmax - 1, qmax)
    out = (q * scale).reshape(rows.shape[0], -1)[:, :cols]
    return out.reshape(weight.shape).to(weight.dtype)


def bnb_status() -> tuple[bool, str]:
    """(usable, version or the reason it is not): bitsandbytes quantizes a small tensor on this machine."""
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        probe = torch.ones(4, 64)
        F.dequantize_4bit(*F.quantize_4bit(probe, quant_type="nf4", blocksize=64))
        F.int8_vectorwise_quant(probe.half())
    except Exception as err:  # noqa: BLE001 - any failure means: skip, and say why
        return False, f"bitsandbytes is not usable here ({type(err).__name__}: {err})"
    return True, f"bitsandbytes {bnb.__version__}"


def quantize_bnb(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The weights bitsandbytes stores for `weight`, dequantized with bitsandbytes' own kernels.

    ``nf4``: 4-bit NormalFloat (Dettmers et al., QLoRA, 2023), blocks of 64 with an absmax each, as
    ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`` stores a linear weight.
    ``int8``: LLM.int8() (Dettmers et al., 2022) stores each output row as int8 with its absmax; its
    outlier decomposition acts on activations at run time and uses the same int8 weights, so the weights
    returned here are what every matmul of the 8-bit model sees (up to the fp16 compute dtype).
    """
    import bitsandbytes.functional as F

    if kind == "nf4":
        flat = weight.detach().float().contiguous()
        q, state = F.quantize_4bit(flat, quant_type="nf4", blocksize=64)
        out = F.dequantize_4bit(q, state).reshape(weight.shape)
    elif kind == "int8":
        rows = weight.detach().reshape(-1, weight.shape[-1]).half().contiguous()
        cb, scb, _ = F.int8_vectorwise_quant(rows)
        out = (cb.float() * scb.float()[:, None] / 127.0).reshape(weight.shape)
    else:
        raise ValueError(f"bitsandbytes quantization is 'int8' or 'nf4', got {kind!r}")
    return out.to(weight.dtype)


@torch.no_grad()
def quantize_model(model: torch.nn.Module, attack: Attack) -> dict[str, Any]:
    """Quantize every prunable matrix of `model` in place with a quant or bnb `attack`; zeros stay zeros.

    Returns ``{"matrices": n, "zeros_kept": True, "mean_abs_change": ...}``. Raises if a zero moved (it
    cannot by construction; the check is what makes the promise testable on any model).
    """
    if attack.kind not in ("quant", "bnb"):
        raise ValueError(f"{attack.name} is not a quantization attack")
    params = prunable_parameters(model)
    if not params:
        raise ValueError("the model has no prunable matrices to quantize")
    total, change = 0, 0.0
    for name, p in params.items():
        zero = p == 0
        new = quantize_rtn(p, attack.bits) if attack.kind == "quant" else quantize_bnb(p, attack.bnb_type)
        new = new.to(p.device).masked_fill_(zero, 0.0)
        change += float((new.float() - p.float()).abs().sum())
        total += p.numel()
        p.copy_(new)
        if not torch.equal(p == 0, zero | (new == 0)):  # pragma: no cover - guaranteed by the line above
            raise RuntimeError(f"{attack.name} moved a zero of {name}")
    return {"matrices": len(params), "zeros_kept": True, "mean_abs_change": change / max(total, 1)}


# ----------------------------------------------------------------------------------------- relearning data
def relearn_selection(rows: Sequence[Mapping], fraction: float = 0.1, seed: int = 0) -> list[int]:
    """Indices of the rows a relearning attack trains on: ``ceil(fraction * len(rows))`` of them (at least one),
    drawn without replacement by a seeded `random.Random`, returned sorted."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the relearning fraction must be in (0, 1], got {fraction}")
    if not rows:
        raise ValueError("the forget set is empty: nothing to relearn from")
    k = max(1, math.ceil(fraction * len(rows) - 1e-9))
    return sorted(random.Random(seed).sample(range(len(rows)), k))


def _row_keys(row: Mapping) -> tuple[str | None, str | None]:
    q = row.get("question")
    t = row.get("text")
    return (q if isinstance(q, str) else None), (t if isinstance(t, str) else None)


def heldout_splits(splits_data: Mapping[str, list[dict]], relearned: Sequence[Mapping],
                   splits: Sequence[str] | None = None) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """The benchmark without the relearned rows: what a relearning attack is judged on.

    A row of an evaluation split is dropped when it *is* a relearned row: the same ``question`` (TOFU-style
    question/answer rows: ``forgetNN`` and ``forgetNN_perturbed`` share their questions), the same ``text``, or a
    ``prompt`` / ``text`` that is part of a relearned text (MUSE-style verbatim-memorisation prompts cut from the
    forget texts). Rows of other kinds (e.g. MUSE knowledge questions, WMDP multiple-choice questions) are kept:
    they are not the relearned rows. Only `splits` are filtered (default: all). Returns the filtered splits and
    the number of rows dropped per split.
    """
    questions = {q for q, _ in map(_row_keys, relearned) if q is not None}
    texts = [t for _, t in map(_row_keys, relearned) if t]
    chosen = set(splits_data if splits is None else splits)

    def relearned_row(r: Mapping) -> bool:
        q, t = _row_keys(r)
        if q is not None and q in questions:
            return True
        for piece in (t, r.get("prompt") if isinstance(r.get("prompt"), str) else None):
            if piece and any(piece in full for full in texts):
                return True
        return False

    out: dict[str, list[dict]] = {}
    dropped: dict[str, int] = {}
    for name, rows in splits_data.items():
        if name not in chosen or not isinstance(rows, list):
            out[name] = rows
            continue
        kept = [r for r in rows if not (isinstance(r, Mapping) and relearned_row(r))]
        if len(kept) != len(rows):
            dropped[name] = len(rows) - len(kept)
            if not kept:
                raise ValueError(f"every row of {name!r} was relearned; nothing is left to judge the attack on "
                                 "(lower the relearning fraction)")
        out[name] = kept
    return out, dropped


def restrict_per_example(results: Mapping, questions: set[str]) -> dict:
    """A copy of a results document whose per-example forget lists keep only `questions` (in their order), so a
    retain model's truth ratios are compared with an attacked model's on the same questions."""
    out = copy.deepcopy(dict(results))
    forget = out.get("per_example", {}).get("forget")
    if not forget or "question" not in forget:
        return out
    keep = [i for i, q in enumerate(forget["question"]) if q in questions]
    n = len(forget["question"])
    out["per_example"]["forget"] = {k: ([v[i] for i in keep] if isinstance(v, list) and len(v) == n else v)
                                    for k, v in forget.items()}
    return out


__all__ = ["ATTACKS", "Attack", "RTN_GROUP_SIZE", "bnb_status", "heldout_splits", "parse_attack", "quantize_bnb",
           "quantize_model", "quantize_rtn", "relearn_selection", "restrict_per_example"]
