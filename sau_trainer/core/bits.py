"""Mask packing: one bit per entry, in the files' sequential order and in memory's bit planes.

**Sequential packing** (`pack_bool`, the mask files' format): eight neighbouring entries per byte, little-endian
bits. **Bit planes** (`pack_planes`, what masks are kept as in memory and what the fused passes of
`sau_trainer.core.fused` read): a mask of ``n`` entries (``n`` a multiple of 8) is ``m = n / 8`` bytes, byte ``j``
holding in its bit ``k`` the entry ``k * m + j`` of the flat tensor, so a tensor read as ``[8, m]`` finds its bits
in the same byte column of every one of its 8 rows. A mask whose size is not a multiple of 8 is padded with zero
bits at the end. `to_planes` / `from_planes` convert when masks are loaded and saved.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_BIT_WEIGHTS_ON: dict[torch.device, torch.Tensor] = {}


def _bit_weights(device: torch.device) -> torch.Tensor:
    """The bit values on `device`, copied there once (not a host-to-device copy per unpack)."""
    if device not in _BIT_WEIGHTS_ON:
        _BIT_WEIGHTS_ON[device] = _BIT_WEIGHTS.to(device)
    return _BIT_WEIGHTS_ON[device]


# --------------------------------------------------------------------------- sequential (the files)
def pack_bool(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into a flat uint8 tensor, eight entries per byte (little-endian bits)."""
    flat = mask.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) * _bit_weights(flat.device)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bool(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Inverse of `pack_bool`: a bool tensor of `shape` on `packed`'s device."""
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    bits = packed.unsqueeze(1).bitwise_and(_bit_weights(packed.device)).ne(0)
    return bits.reshape(-1)[:numel].reshape(shape)


# --------------------------------------------------------------------------- bit planes (memory)
def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(8, dtype=torch.uint8).view(8, 1).to(device)
    return _SHIFTS[device]


def pack_planes(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as ``ceil(n / 8)`` bit-plane bytes (see the module docstring)."""
    flat = mask.reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    planes = flat.view(8, -1).to(torch.uint8) << _shifts(flat.device)
    return planes.sum(0, dtype=torch.uint8)


def unpack_planes(planes: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Inverse of `pack_planes`: a bool tensor of `shape` on `planes`' device."""
    shape = tuple(int(s) for s in shape)
    bits = (planes.view(1, -1) >> _shifts(planes.device)).bitwise_and_(1).bool()
    return bits.reshape(-1)[: _numel(shape)].reshape(shape)


def to_planes(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Sequentially packed bits (the files' format, `pack_bool`) as bit planes."""
    return pack_planes(unpack_bool(packed, shape))


def from_planes(planes: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Bit planes as sequentially packed bits (the files' format)."""
    return pack_bool(unpack_planes(planes, shape))
