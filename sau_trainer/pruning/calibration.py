"""Calibration data and the layer-by-layer driver shared by the calibrated pruners (Wanda, SparseGPT).

The driver follows the sequential scheme of both papers: the inputs of the first decoder layer are
captured once (a forward pre-hook stores them and raises, so nothing past the embeddings runs); then
each layer in turn (1) runs all calibration batches with forward hooks on its linears that accumulate
the statistic the pruner needs, (2) is pruned, and (3) runs the batches again so that the *pruned*
layer's outputs become the next layer's inputs. Only one layer's statistics exist at a time, and the
hidden states of one layer boundary (plus the per-batch position embeddings and attention masks the
model passes its layers) are the only activations kept, so memory stays flat in the depth.

Padding never enters the statistics: every batch carries a token mask and the hooks drop padded rows.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.truncation import TruncationCount
from ..progress import show_progress as show_bar

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- calibration samples
@dataclass
class CalibrationSet:
    """Calibration samples as 1-D token-id tensors holding real tokens only (no padding)."""

    samples: list[torch.Tensor]
    kind: str
    seq_len: int
    source: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return sum(int(s.numel()) for s in self.samples)

    def describe(self) -> dict:
        """A JSON-able description (for ``sparsity.json``), with a hash of the exact token ids."""
        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(s.to(torch.int64).numpy().tobytes())
            digest.update(b"|")
        out = {
            "kind": self.kind,
            "num_samples": len(self.samples),
            "num_tokens": self.num_tokens,
            "seq_len": self.seq_len,
            "token_ids_sha256": digest.hexdigest(),
        }
        if self.source:
            out["source"] = self.source
        out.update(self.extra)
        return out


_HOW = (
    "Pass calibration as a list of texts (with tokenizer=...), a datasets.Dataset with a 'text' column, "
    "a tensor of token ids (one row per sample), or a dict with 'input_ids' and 'attention_mask'."
)


def prepare_calibration(
    calibration,
    tokenizer=None,
    num_samples: int = 128,
    seq_len: int = 2048,
    vocab_size: int | None = None,
    text_field: str = "text",
    source: str | None = None,
) -> CalibrationSet:
    """Turn the accepted calibration inputs into at most `num_samples` samples of at most `seq_len` tokens.

    Texts: each non-blank text is one sample, tokenised with the tokenizer's special tokens and
    truncated to `seq_len`. Token ids: each row is one sample (a dict's ``attention_mask`` removes
    padding). Empty samples are dropped; if none is left, or an id is outside the vocabulary, a
    ValueError says so. Nothing here touches a model.
    """
    if calibration is None:
        raise ValueError("No calibration data given. " + _HOW)
    if num_samples < 1 or seq_len < 1:
        raise ValueError(f"num_samples ({num_samples}) and seq_len ({seq_len}) must both be at least 1.")

    texts = None
    rows: list[torch.Tensor] | None = None
    kind = None
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None

    if datasets is not None and isinstance(calibration, datasets.DatasetDict):
        raise ValueError(
            f"calibration is a DatasetDict with splits {list(calibration)}; pass one split, e.g. calibration['train']."
        )
    if datasets is not None and isinstance(calibration, datasets.Dataset):
        kind = "dataset"
        if text_field in calibration.column_names:
            # read lazily: only as many rows as it takes to find num_samples non-blank texts
            texts = (row[text_field] for row in calibration.select_columns([text_field]))
        elif "input_ids" in calibration.column_names:
            rows = [torch.as_tensor(r, dtype=torch.long) for r in calibration["input_ids"]]
        else:
            raise ValueError(
                f"The calibration dataset has columns {calibration.column_names} but no {text_field!r} column "
                "(or 'input_ids'). Rename the text column or pass text_field=..."
            )
    elif isinstance(calibration, str):
        raise ValueError(
            "calibration is a single string. Pass a list of texts (each is one sample); to read a file use "
            "sau_trainer.pruning.load_texts(path)."
        )
    elif isinstance(calibration, torch.Tensor):
        kind = "token_ids"
        rows = _rows_from_tensor(calibration, None)
    elif isinstance(calibration, Mapping):
        kind = "token_ids"
        if "input_ids" not in calibration:
            raise ValueError(f"The calibration dict has keys {list(calibration)} but no 'input_ids'. " + _HOW)
        rows = _rows_from_tensor(calibration["input_ids"], calibration.get("attention_mask"))
    elif isinstance(calibration, Sequence):
        items = list(calibration)
        if items and all(isinstance(t, str) for t in items):
            kind, texts = "texts", items
        elif all(isinstance(t, (torch.Tensor, list, tuple)) for t in items):
            kind = "token_ids"
            rows = [torch.as_tensor(t, dtype=torch.long).reshape(-1) for t in items]
        else:
            raise ValueError("calibration is a list mixing texts and other things. " + _HOW)
    else:
        raise ValueError(f"calibration of type {type(calibration).__name__} is not supported. " + _HOW)

    if texts is not None:
        if tokenizer is None:
            raise ValueError("calibration texts need a tokenizer: pass tokenizer=... (the model's tokenizer).")
        texts = _take_texts(texts, num_samples)
        rows, full = [], []
        if texts:
            enc = tokenizer(texts, truncation=True, max_length=seq_len, add_special_tokens=True)
            rows = [torch.as_tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]
            full = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]
    else:
        full = [r.numel() for r in rows]
    used = [i for i, r in enumerate(rows) if r.numel() > 0][:num_samples]
    cut = TruncationCount("Calibration samples", seq_len)  # samples longer than seq_len: said, not silent
    for i in used:
        cut.add(source or kind or "calibration", full[i] - seq_len)
    cut.log(logger, logging.INFO)  # cutting calibration text to seq_len is the method's design, not a loss
    samples = [rows[i][:seq_len] for i in used]
    if not samples:
        raise ValueError(
            f"The calibration data ({kind}) has no usable tokens: every sample is empty, blank or all padding. "
            "Pass non-empty texts or token ids."
        )
    if vocab_size is not None:
        lo = min(int(s.min()) for s in samples)
        hi = max(int(s.max()) for s in samples)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"Calibration token ids range over [{lo}, {hi}] but the model's vocabulary has {vocab_size} "
                "entries. Tokenize with the model's own tokenizer."
            )
    return CalibrationSet(samples, kind, seq_len, source)


def _take_texts(texts, num_samples: int) -> list[str]:
    out = []
    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"A calibration text is a {type(t).__name__}, not a string. " + _HOW)
        if t.strip():
            out.append(t)
            if len(out) == num_samples:
                break
    return out


def _rows_from_tensor(ids, attention_mask) -> list[torch.Tensor]:
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"Calibration token ids must be integers, got dtype {ids.dtype}.")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise ValueError(f"Calibration token ids must be 1-D or 2-D (samples x tokens), got shape {tuple(ids.shape)}.")
    ids = ids.long().cpu()
    if attention_mask is None:
        return list(ids)
    mask = torch.as_tensor(attention_mask).reshape(ids.shape).bool().cpu()
    return [row[m] for row, m in zip(ids, mask, strict=True)]


def make_batches(samples: list[torch.Tensor], batch_size: int, pad_id: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches; samples are grouped by length to pad little."""
    order = sorted(range(len(samples)), key=lambda i: -samples[i].numel())
    batches = []
    for start in range(0, len(order), batch_size):
        group = [samples[i] for i in order[start : start + batch_size]]
        length = max(s.numel() for s in group)
        ids = torch.full((len(group), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), length), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, : s.numel()] = s
            mask[r, : s.numel()] = 1
        batches.append((ids, mask))
    return batches


# --------------------------------------------------------------------------- statistics
class SquaredNormAccumulator:
    """Per input channel ``sum_t x_tj^2`` over real tokens: Wanda's ``||X_j||_2^2``."""

    def __init__(self, in_features: int, device):
        self.total = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.total.device, torch.float32)
        self.total += x.pow(2).sum(0)
        self.tokens += x.shape[0]

    def value(self) -> torch.Tensor:
        return self.total


class HessianAccumulator:
    """``X^T X / tokens`` over real tokens (the layer-wise least-squares Hessian, up to a factor 2)."""

    def __init__(self, in_features: int, device):
        self.total = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.total.device, torch.float32)
        self.total.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def value(self) -> torch.Tensor:
        return self.total / max(self.tokens, 1)


ACCUMULATORS = {"act_norm_sq": SquaredNormAccumulator, "hessian": HessianAccumulator}


# --------------------------------------------------------------------------- capturing and running layers
class _LayerInputsCaptured(Exception):
    pass


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _first_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@dataclass
class _Batch:
    hidden: torch.Tensor
    kwargs: dict  # layer type -> the keyword arguments the model passes to layers of that type
    token_mask: torch.Tensor  # bool, (batch * seq,)


def layer_types(model: nn.Module, n_layers: int) -> list[str]:
    """Each decoder layer's attention type (``config.layer_types``: sliding vs full, ...), or one type for all.

    Models that mix types (Gemma 2/3, Qwen with sliding windows, ...) pass each type its own attention
    mask (and sometimes position embeddings), so calibration must replay the right ones per layer.
    """
    types = getattr(getattr(model, "config", None), "layer_types", None)
    return [str(t) for t in types] if types is not None and len(types) == n_layers else ["all"] * n_layers


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, types: list[str], batches, device=None) -> list[_Batch]:
    """Run the model up to the decoder layers on every batch and keep the first layer's inputs, plus the
    keyword arguments (position embeddings, attention mask, position ids, ...) the model passes to the
    first layer of each type.

    Forward pre-hooks store them and the last one raises, so the rest of the model does not run.
    """
    first_of_type = {}
    for idx, t in enumerate(types):
        first_of_type.setdefault(t, idx)
    wanted = set(first_of_type.values())
    last = max(wanted)
    captured: dict = {}

    def make_hook(idx):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            kwargs.pop("hidden_states", None)
            if idx == 0:
                captured["hidden"] = hidden
            captured.setdefault("kwargs", {})[types[idx]] = kwargs
            if idx == last:
                raise _LayerInputsCaptured
        return hook

    embed_device = model.get_input_embeddings().weight.device
    out = []
    handles = [layers[idx].register_forward_pre_hook(make_hook(idx), with_kwargs=True) for idx in sorted(wanted)]
    try:
        for ids, mask in batches:
            captured.clear()
            try:
                model(input_ids=ids.to(embed_device), attention_mask=mask.to(embed_device), use_cache=False)
            except _LayerInputsCaptured:
                pass
            if "hidden" not in captured or len(captured["kwargs"]) != len(first_of_type):
                raise RuntimeError("The model's forward never reached its decoder layers.")
            target = device if device is not None else captured["hidden"].device
            out.append(_Batch(captured["hidden"].to(target), _to_device(captured["kwargs"], target),
                              mask.reshape(-1).bool().to(target)))
    finally:
        for h in handles:
            h.remove()
    return out


def _layer_forward(layer: nn.Module, batch: _Batch, layer_type: str) -> torch.Tensor:
    out = layer(batch.hidden, **batch.kwargs[layer_type])
    return out[0] if isinstance(out, (tuple, list)) else out


# --------------------------------------------------------------------------- the layer-by-layer driver
@torch.no_grad()
def prune_layers(
    model: nn.Module,
    layers: nn.ModuleList,
    modules: Mapping[str, nn.Module],
    prune_one,
    statistic: str | None,
    batches=None,
    device=None,
    progress: bool = True,
    desc: str = "pruning",
) -> None:
    """Prune the decoder `layers` one at a time.

    `modules` maps the prunable parameter names to the modules that own them (an ``nn.Linear``, or a
    fused experts module); ``prune_one(name, module, stat)`` prunes one parameter in place (`stat` is the accumulated statistic, or None when `statistic` is None). With a
    statistic, each layer sees the outputs of the already-pruned layers before it. `device` (optional)
    is where each layer runs; a layer living elsewhere is moved there and back (CPU offload).
    """
    layer_names = {id(mod): name for name, mod in model.named_modules()}
    per_layer = []
    for layer in layers:
        prefix = layer_names[id(layer)] + "."
        per_layer.append({n: m for n, m in modules.items() if n.startswith(prefix)})

    inputs = None
    types = layer_types(model, len(layers))
    if statistic is not None:
        inputs = capture_layer_inputs(model, layers, types, batches, device)
    token_mask = {}

    bar = tqdm(list(enumerate(layers)), desc=desc, unit="layer", disable=not show_bar(progress))
    for idx, layer in bar:
        linears = per_layer[idx]
        bar.set_postfix_str(f"layer {idx}: {len(linears)} matrices")
        home = _first_device(layer)
        run_on = torch.device(device) if device is not None else home
        if run_on != home:
            layer.to(run_on)
        try:
            if statistic is None:
                for name, mod in linears.items():
                    prune_one(name, mod, None)
                continue
            accs = {n: ACCUMULATORS[statistic](m.in_features, run_on) for n, m in linears.items()}

            def make_hook(acc):
                def hook(module, args, output):
                    x = args[0]
                    acc.add(x.reshape(-1, x.shape[-1])[token_mask["current"].to(x.device)])
                return hook

            handles = [m.register_forward_hook(make_hook(accs[n])) for n, m in linears.items()]
            try:
                for batch in inputs:
                    batch.hidden = batch.hidden.to(run_on)
                    batch.kwargs = _to_device(batch.kwargs, run_on)
                    token_mask["current"] = batch.token_mask
                    _layer_forward(layer, batch, types[idx])
            finally:
                for h in handles:
                    h.remove()
            for name, mod in linears.items():
                prune_one(name, mod, accs.pop(name).value())
            if idx + 1 < len(layers):
                for batch in inputs:
                    batch.hidden = _layer_forward(layer, batch, types[idx])
        finally:
            if run_on != home:
                layer.to(home)
    bar.close()
