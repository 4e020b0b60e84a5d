"""The fused, sync-free passes that apply bit-plane masks (SPEC section 6: each pass near the memory floor).

**Bit planes** (`sau_trainer.core.bits`: byte ``j`` of a mask holds in its bit ``k`` the entry ``k * n / 8 + j``).
Applying such a mask is one contiguous, vectorisable loop over the tensor with a broadcast byte load (1/8 byte
per entry read beyond the tensor itself), where the files' sequential packing (8 neighbours per byte,
`bits.pack_bool`) needs an indirect index per entry and does not vectorise.

**Passes.** `where_` computes ``t = where(M, t * W, +0.0)`` in place (the plain mask pass, the SAU pass with ``G``
and ``W`` in one pass, and the re-zero of the weights), `scale_update_` computes
``p = where(G, old + W * (p - old), p)`` (``update``-mode ``W``); `where_many_` runs a whole pass, 8 matrices per
compiled call. Each matrix is one ``torch.compile``'d kernel (C++/OpenMP on CPU, Triton on CUDA) reading the tensor
once and writing it once; nothing in them reads a value back to the host. Where compiling is unavailable or
fails, an eager version with the same results runs instead (it unpacks the mask to a bool tensor, one matrix at
a time: slower, never different). The products are computed in fp32 and rounded once to the tensor's dtype, as the eager
reference `selection.apply_sau_` does, so both give bit-identical gradients.

``SAU_TRAINER_KERNELS`` (environment) chooses: ``auto`` (default: compiled for tensors of at least
`COMPILE_MIN_NUMEL` entries when a compiler is present, eager below: compiling costs seconds once per process and
saves nothing on tiny matrices), ``compile`` (always, where possible) or ``eager``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable

import torch

from .bits import unpack_planes

logger = logging.getLogger("sau_trainer.fused")  # its name before the move: users and tests set its level

COMPILE_MIN_NUMEL = 1 << 16
_MODES = ("auto", "compile", "eager")
_compiled: dict[str, object] = {}
_compile_failed: str | None = None


# --------------------------------------------------------------------------- kernels
def _bits(planes: torch.Tensor, ndim: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.int32, device=planes.device).view(8, 1, 1, 1)
    return ((planes.to(torch.int32) >> shifts) & 1) != 0


def _where_kernel(t: torch.Tensor, planes: torch.Tensor) -> None:
    t.copy_(torch.where(_bits(planes, t.dim()), t, torch.zeros((), dtype=t.dtype, device=t.device)))


def _where_scaled_kernel(t: torch.Tensor, planes: torch.Tensor, w: torch.Tensor) -> None:
    scaled = (t.float() * w).to(t.dtype)
    t.copy_(torch.where(_bits(planes, t.dim()), scaled, torch.zeros((), dtype=t.dtype, device=t.device)))


def _scale_update_kernel(p: torch.Tensor, old: torch.Tensor, planes: torch.Tensor, w: torch.Tensor) -> None:
    o = old.float()
    p.copy_(torch.where(_bits(planes, p.dim()), (o + w * (p.float() - o)).to(p.dtype), p))


def _where_list_kernel(ts: list[torch.Tensor], planes: list[torch.Tensor]) -> None:
    for t, p in zip(ts, planes):  # noqa: B905 (traced by dynamo: lengths are equal by construction)
        _where_kernel(t, p)


def _where_scaled_list_kernel(ts: list[torch.Tensor], planes: list[torch.Tensor], ws: list[torch.Tensor]) -> None:
    for t, p, w in zip(ts, planes, ws):  # noqa: B905 (traced by dynamo: lengths are equal by construction)
        _where_scaled_kernel(t, p, w)


_KERNELS = {"where": _where_kernel, "where_scaled": _where_scaled_kernel, "scale_update": _scale_update_kernel,
            "where_list": _where_list_kernel, "where_scaled_list": _where_scaled_list_kernel}


def kernel_mode() -> str:
    mode = os.environ.get("SAU_TRAINER_KERNELS", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"SAU_TRAINER_KERNELS={mode!r}: choose one of {_MODES}.")
    return mode


_HAS_CXX: list[bool] = []


def _can_compile(device: torch.device) -> bool:
    if _compile_failed is not None:
        return False
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        if not _HAS_CXX:  # looked up once: this runs for every matrix of every pass
            _HAS_CXX.append(shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None)
        return _HAS_CXX[0]
    return False


def _use_compiled(t: torch.Tensor) -> bool:
    mode = kernel_mode()
    if mode == "eager" or not _can_compile(t.device):
        return False
    return mode == "compile" or t.numel() >= COMPILE_MIN_NUMEL


def _compiled_kernel(name: str):
    if name not in _compiled:
        # Each dtype and each broadcast pattern of W (scalar, per row, per expert, full) is one more compiled
        # variant of the same function: allow more than dynamo's default of 8 (raising a limit changes nothing
        # else that is compiled in this process).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled[name] = torch.compile(_KERNELS[name], dynamic=True, fullgraph=True)
    return _compiled[name]


def _run(name: str, *args, duck_shape: bool = True) -> bool:
    """Run the compiled kernel `name`; False (and eager from now on) when compiling fails."""
    global _compile_failed
    try:
        if duck_shape:
            _compiled_kernel(name)(*args)
        else:
            import torch.fx.experimental._config as fx_config  # private: inside the try, eager if it is gone

            with fx_config.patch(use_duck_shape=False):
                _compiled_kernel(name)(*args)
        return True
    except Exception as e:  # a missing compiler, an unsupported device: the eager path gives the same result
        _compile_failed = f"{type(e).__name__}: {e}"
        logger.warning("torch.compile of the mask kernels failed (%s); using the eager passes (same results, "
                       "slower). Set SAU_TRAINER_KERNELS=eager to skip the attempt.", _compile_failed.splitlines()[0])
        return False


def _views(t: torch.Tensor, planes: torch.Tensor, w: torch.Tensor | None):
    """``t`` as ``[8, d0 / 8, d1, d2]`` (a matrix ``[8, rows / 8, 1, cols]``, a flat tensor ``[8, 1, 1, n / 8]``), the
    planes as ``[1, d0 / 8, d1, d2]`` and ``w`` as a rank-4 fp32 tensor broadcastable against them; None where no
    such views exist (then the eager path runs). One rank for every tensor keeps the compiled variants few."""
    if not t.is_contiguous() or planes.numel() * 8 != t.numel():
        return None
    shape = tuple(t.shape)
    if t.dim() in (2, 3) and shape[0] % 8 == 0:
        dims = (shape[0] // 8,) + (1,) * (3 - t.dim()) + shape[1:]
    elif w is None or w.numel() == 1:
        dims = (1, 1, t.numel() // 8)
    else:
        return None
    tv, pv = t.view((8,) + dims), planes.view((1,) + dims)
    if w is None:
        return tv, pv, None
    w = w.to(device=t.device, dtype=torch.float32)
    if w.numel() == 1:
        return tv, pv, w.reshape(1, 1, 1, 1)
    if w.dim() > t.dim():
        return None
    wb = tuple((1,) * (t.dim() - w.dim()) + tuple(w.shape))
    if any(a not in (1, b) for a, b in zip(wb, shape, strict=True)):
        return None
    rest = (1,) * (3 - t.dim()) + wb[1:]
    lead = (8, shape[0] // 8) if wb[0] == shape[0] else (1, 1)
    return tv, pv, w.reshape(lead + rest)


# --------------------------------------------------------------------------- the passes
@torch.no_grad()
def where_(t: torch.Tensor, planes: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """In place: ``t = where(mask, t * w, +0.0)``, the product in fp32 rounded once to ``t``'s dtype (``w``: None,
    a scalar, per row or expert broadcastable against ``t``, or full). NaN and inf outside the mask become +0.0."""
    views = _views(t, planes, w) if _use_compiled(t) else None
    if views is not None:
        tv, pv, wv = views
        if _run("where" if wv is None else "where_scaled", *((tv, pv) if wv is None else (tv, pv, wv))):
            return t
    keep = unpack_planes(planes, t.shape)
    if w is not None:
        t.mul_(w.to(t.device))
    t.masked_fill_(~keep, 0.0)  # last: exact +0.0 outside the mask whatever t and w hold (NaN * 0 is NaN)
    return t


CHUNK = 8


@torch.no_grad()
def where_many_(items: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
    """`where_` over many ``(tensor, planes, w)``: the compiled ones `CHUNK` matrices per call (one guard check
    and one launch sequence per chunk instead of per matrix: at 70-224 matrices the per-call overhead would be
    a good part of the memory floor; a whole pass in one graph would take minutes to compile), the rest one by
    one. Same results as `where_`.

    Matrices are grouped by what the compiled graph specialises on (dtype, which view dimensions are 1, whether
    and how ``w`` broadcasts), and sizes are not "duck-shaped" (equal sizes are not assumed to stay equal), so
    every chunk of a group reuses one graph: two compilations per group at most (full chunks and the rest).
    """
    groups: dict[tuple, list[tuple]] = {}
    for t, planes, w in items:
        views = _views(t, planes, w) if _use_compiled(t) else None
        if views is None:
            where_(t, planes, w)
            continue
        tv, _, wv = views
        key = (t.dtype, t.device, tuple(d == 1 for d in tv.shape),
               None if wv is None else tuple(d == 1 for d in wv.shape))
        groups.setdefault(key, []).append((t, planes, w, views))
    for key, group in groups.items():
        name = "where_list" if key[3] is None else "where_scaled_list"
        for i in range(0, len(group), CHUNK):
            chunk = group[i : i + CHUNK]
            lists = [[v[3][j] for v in chunk] for j in range(2 if key[3] is None else 3)]
            if not _run(name, *lists, duck_shape=False):
                for t, planes, w, _ in chunk:  # compiling failed before anything ran: the eager path
                    where_(t, planes, w)


@torch.no_grad()
def scale_update_(p: torch.Tensor, old: torch.Tensor, planes: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """In place: ``p = where(mask, old + w * (p - old), p)`` in fp32, rounded once (``update``-mode ``W``)."""
    views = _views(p, planes, w) if _use_compiled(p) else None
    if views is not None:
        pv, bv, wv = views
        if _run("scale_update", pv, old.view(pv.shape), bv, wv):
            return p
    keep = unpack_planes(planes, p.shape)
    o = old.float()
    p.copy_(torch.where(keep, (o + w.to(p.device).float() * (p.float() - o)).to(p.dtype), p))
    return p


def compile_status() -> str:
    """How the passes run here: for logs and the benchmark."""
    if _compile_failed is not None:
        return f"eager (compiling failed: {_compile_failed.splitlines()[0]})"
    return f"mode={kernel_mode()}"
