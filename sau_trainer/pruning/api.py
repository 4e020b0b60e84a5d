"""`prune_model` (validate, then prune in place), its result, and saving a pruned model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..masks import (
    MASKS_FILE,
    SparsityMasks,
    check_trainable_weights,
    decoder_layers,
    pack_bool,
    prunable_parameters,
    prunable_weights,
)
from .calibration import CalibrationSet, make_batches, prepare_calibration, prune_layers
from .nm import parse_structure, resolve_sparsity
from .registry import PRUNERS

logger = logging.getLogger(__name__)

SPARSITY_FILE = "sparsity.json"
SPARSITY_FORMAT = "sau-trainer/sparsity"
SPARSITY_VERSION = 1


@dataclass
class PruningResult:
    """What `prune_model` did: the masks (True = surviving) and a per-matrix report.

    ``report[param_name]`` holds ``shape``, ``numel``, ``pruned``, ``sparsity`` and, for SparseGPT,
    ``rel_error`` (``||(W - W') X||^2 / ||W X||^2`` on the calibration inputs).
    """

    method: str
    structure: str
    target_sparsity: float
    masks: SparsityMasks
    report: dict[str, dict]
    calibration: dict | None = None
    settings: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def sparsity(self) -> float:
        """Measured fraction of pruned entries over all prunable matrices."""
        return self.masks.sparsity()

    def per_matrix_sparsity(self) -> dict[str, float]:
        return {k: v["sparsity"] for k, v in self.report.items()}

    def to_dict(self) -> dict:
        """The JSON-able metadata written as ``sparsity.json``."""
        settings_json = json.dumps(self.settings, sort_keys=True)
        return {
            "format": SPARSITY_FORMAT,
            "version": SPARSITY_VERSION,
            "method": self.method,
            "structure": self.structure,
            "target_sparsity": self.target_sparsity,
            "measured_sparsity": self.sparsity,
            "num_matrices": len(self.report),
            "per_matrix_sparsity": self.per_matrix_sparsity(),
            "dense": "embeddings, lm_head, norms and biases are not pruned",
            "calibration": self.calibration,
            "settings": self.settings,
            "settings_sha256": hashlib.sha256(settings_json.encode()).hexdigest(),
            "masks_file": MASKS_FILE,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def prune_model(
    model: nn.Module,
    method: str,
    sparsity: float | None = 0.5,
    structure: str = "unstructured",
    calibration=None,
    tokenizer=None,
    num_samples: int = 128,
    seq_len: int = 2048,
    *,
    batch_size: int = 8,
    blocksize: int = 128,
    percdamp: float = 0.01,
    device: str | torch.device | None = None,
    progress: bool = True,
    text_field: str = "text",
    calibration_source: str | None = None,
) -> PruningResult:
    """Prune every prunable matrix of `model` in place with `method` and return a `PruningResult`.

    - `method`: a key of `PRUNERS` (``magnitude``, ``wanda``, ``sparsegpt``).
    - `sparsity`: fraction of each matrix set to zero, in [0, 1). With an N:M `structure` (``"2:4"``:
      at most 2 survivors in every 4 consecutive inputs) it is implied by the pattern (None is fine).
    - `calibration` (Wanda, SparseGPT; ignored by magnitude): a list of texts (with `tokenizer`), a
      ``datasets.Dataset`` with a `text_field` column, a tensor of token ids (one row per sample) or a
      dict with ``input_ids`` and ``attention_mask``. Each sample is truncated to `seq_len`; at most
      `num_samples` are used; padding never enters the statistics. Samples run `batch_size` at a time.
    - SparseGPT: `blocksize` columns per lazy update, `percdamp` dampening of the Hessian diagonal mean.
    - `device`: where each decoder layer runs (default: where it lives); layers elsewhere are moved
      there one at a time.

    Every argument is validated before any weight changes. Embeddings, ``lm_head``, norms, routers and
    biases stay dense (see `sau_trainer.core.prunable.prunable_weights`). Fused mixture-of-experts tensors are
    pruned one expert at a time (magnitude only: calibrated methods are refused on experts).
    """
    # ---- validation: nothing below touches a weight until all of it has passed
    if method not in PRUNERS:
        raise ValueError(f"Unknown pruning method {method!r}; choose one of {sorted(PRUNERS)}.")
    pruner = PRUNERS[method]
    struct = parse_structure(structure)
    target = resolve_sparsity(sparsity, struct)
    for name, value in (("batch_size", batch_size), ("blocksize", blocksize), ("num_samples", num_samples),
                        ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not 0 <= percdamp:
        raise ValueError(f"percdamp must be non-negative, got {percdamp!r}.")
    from ..data.truncation import model_positions

    positions = model_positions(model)
    if pruner.statistic is not None and positions is not None and seq_len > positions:  # never past the positions
        logger.info("seq_len %d is more than the model's %d positions: calibration samples are cut to %d tokens.",
                    seq_len, positions, positions)
        seq_len = positions
    weights = prunable_weights(model)
    if not weights:
        raise ValueError(
            f"{type(model).__name__} has no prunable matrices (nn.Linear layers or fused experts inside the language "
            "model's decoder blocks); pruning needs a decoder-only transformer such as Llama, Mistral or Qwen."
        )
    check_trainable_weights({n: w.param for n, w in weights.items()})
    experts = [n for n, w in weights.items() if w.expert]
    if pruner.statistic is not None and experts:
        raise ValueError(
            f"{method} cannot prune mixture-of-experts weights yet (first: {experts[0]}): its scores need each "
            "expert's own input statistics, from the calibration tokens the router sends to that expert, which "
            "this version does not collect (an expert that few tokens reach would be pruned on noise). Prune "
            "this model with method='magnitude', which needs no calibration."
        )
    if struct.is_nm:
        in_dims = {n: w.layout.units(w.param).shape[-1] for n, w in weights.items()}
        bad = {n: d for n, d in in_dims.items() if d % struct.m}
        if bad:
            name, dim = next(iter(bad.items()))
            raise ValueError(
                f"structure {struct} needs every prunable matrix's input dimension to be a multiple of {struct.m}, "
                f"but {len(bad)} are not (first: {name} with in_features={dim}). Choose an M that divides it."
            )
        if pruner.statistic == "hessian" and blocksize % struct.m:  # SparseGPT-style: blocks of columns
            raise ValueError(f"blocksize ({blocksize}) must be a multiple of M={struct.m} for structure {struct}.")
    calib: CalibrationSet | None = None
    if pruner.statistic is not None:
        if calibration is None:
            raise ValueError(
                f"{method} needs calibration data (it scores weights by their inputs' activations). Pass "
                "calibration= a list of texts with tokenizer=..., a Dataset with a 'text' column, or a tensor "
                "of token ids; or use method='magnitude', which needs none."
            )
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        calib = prepare_calibration(calibration, tokenizer, num_samples, seq_len, vocab, text_field,
                                    calibration_source)
    elif calibration is not None:
        logger.info("%s pruning uses no calibration data; the calibration argument is ignored", method)

    # ---- pruning
    settings = {"method": method, "structure": str(struct), "sparsity": target}
    if calib is not None:
        settings.update(num_samples=num_samples, seq_len=seq_len, batch_size=batch_size)
    if pruner.statistic == "hessian":  # the Hessian pass's block size and dampening shape the result
        settings.update(blocksize=blocksize, percdamp=percdamp)
    packed, shapes, report = {}, {}, {}

    def prune_one(name: str, module: nn.Module, stat):
        """Prune one parameter in place, one selection unit (a matrix, or each expert's matrix) at a time."""
        w = weights[name]
        units = w.layout.units(w.param.data)
        keeps, extra = [], {}
        for u in range(units.shape[0]):
            new, keep, extra = pruner.prune(units[u], stat, target, struct, blocksize=blocksize, percdamp=percdamp)
            units[u].copy_(new.to(device=units.device, dtype=units.dtype))
            keeps.append(keep.to(units.device))
        keep = w.layout.restore(torch.stack(keeps), w.param.shape)
        packed[name] = pack_bool(keep).cpu()
        shapes[name] = tuple(w.param.shape)
        pruned = int(keep.numel() - keep.sum())
        report[name] = {"shape": list(w.param.shape), "numel": keep.numel(), "pruned": pruned,
                        "sparsity": pruned / keep.numel(), **extra}
        if w.layout.experts:
            per_expert = (~torch.stack(keeps)).reshape(len(keeps), -1).float().mean(1)
            report[name]["per_expert_sparsity"] = [float(x) for x in per_expert]

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        batches = None
        if calib is not None:
            pad = getattr(tokenizer, "pad_token_id", None)
            batches = make_batches(calib.samples, batch_size, 0 if pad is None else pad)
        targets = {n: w.module for n, w in weights.items()}
        prune_layers(model, decoder_layers(model), targets, prune_one, pruner.statistic, batches,
                     device, progress, desc=f"{method} {struct}" if struct.is_nm else f"{method} {target:g}")
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    order = list(weights)
    masks = SparsityMasks({k: packed[k] for k in order}, {k: shapes[k] for k in order}, source=f"pruner:{method}")
    result = PruningResult(method, str(struct), target, masks, {k: report[k] for k in order},
                           calib.describe() if calib is not None else None, settings, elapsed)
    _warn_surviving_zeros(model, masks)
    logger.info("%s pruning (%s, target %.4g): %.4f sparse over %d matrices in %.1f s",
                method, struct, target, result.sparsity, len(masks), elapsed)
    return result


def _warn_surviving_zeros(model: nn.Module, masks: SparsityMasks) -> None:
    params = prunable_parameters(model)
    extra = sum(int(((params[k] == 0) & masks.get(k, params[k].device)).sum()) for k in masks.names)
    if extra:
        logger.warning("%d surviving weights are exactly zero; the saved masks (not the zeros) say which "
                       "weights are pruned", extra)


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all prunable matrices of `model` (FSDP2-sharded: counted on the local shards and
    summed over the ranks; every rank must call it then)."""
    import torch

    from ..shards import is_sharded, local

    params = prunable_parameters(model)
    zeros = sum(int((local(p.detach()) == 0).sum()) for p in params.values())
    if any(is_sharded(p) for p in params.values()):
        count = torch.tensor([zeros], dtype=torch.int64, device=local(next(iter(params.values()))).device)
        torch.distributed.all_reduce(count)
        zeros = int(count[0])
    return zeros / max(sum(p.numel() for p in params.values()), 1)


def save_sparse_model(model: nn.Module, tokenizer, output_dir: str | os.PathLike, result: PruningResult) -> str:
    """Save a pruned model: safetensors with explicit zeros, ``sparsity.json`` and the packed masks.

    Returns `output_dir`. Loading the directory back (``from_pretrained`` then
    ``SparsityMasks.from_model``) or ``SparsityMasks.load(output_dir)`` gives the same masks.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    result.masks.check(model)
    model.save_pretrained(output_dir)  # safetensors, zeros written out
    from ..modeling import strip_remote_code

    strip_remote_code(output_dir)  # no auto_map / trust_remote_code: the package never runs remote code
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    result.masks.save(output_dir)
    meta = result.to_dict()
    meta["measured_sparsity_weights"] = measured_sparsity(model)
    with open(os.path.join(output_dir, SPARSITY_FILE), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return output_dir


def load_sparsity_metadata(path: str | os.PathLike) -> dict:
    """Read ``sparsity.json`` from a directory saved by `save_sparse_model`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, SPARSITY_FILE)
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != SPARSITY_FORMAT:
        raise ValueError(f"{path} is not a sau-trainer sparsity file")
    return meta
