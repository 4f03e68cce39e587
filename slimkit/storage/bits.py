"""Bit packing for the ``.slim`` codecs: masks at 1 bit per element, integers at 1-8 bits.

Bits are packed most significant first; a stream of ``n`` values of ``b`` bits takes
exactly ``ceil(n * b / 8)`` bytes (docs/format.md).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["pack_bits", "unpack_bits", "pack_uint", "unpack_uint"]


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().reshape(-1).numpy(), dtype=np.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    bits = np.packbits(mask.reshape(-1).to(torch.uint8).cpu().numpy())
    return torch.from_numpy(bits)


def unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    if packed.dtype != torch.uint8 or packed.numel() != (count + 7) // 8:
        raise ValueError(f"mask bitmap has {packed.numel()} bytes, expected {(count + 7) // 8}")
    return torch.from_numpy(np.unpackbits(packed.reshape(-1).numpy(), count=count).astype(bool))


def pack_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers in [0, 2**bits) at ``bits`` (1-8) bits each, most significant bit first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"cannot pack at {bits} bits; 1 to 8 are supported")
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit into {bits} bits")
    if v.size == 0:
        return np.zeros(0, np.uint8)
    return np.packbits(np.unpackbits(v[:, None], axis=1)[:, 8 - bits:].reshape(-1))


def unpack_uint(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`; the byte count must be exactly ``ceil(count * bits / 8)``."""
    if not 1 <= bits <= 8:
        raise ValueError(f"cannot unpack {bits}-bit values; 1 to 8 are supported")
    need = (count * bits + 7) // 8
    if packed.size != need:
        raise ValueError(f"{count} values of {bits} bits take {need} bytes, found {packed.size}")
    if count == 0:
        return np.zeros(0, np.uint8)
    flat = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    if bits < 8:
        flat = np.concatenate([np.zeros((count, 8 - bits), np.uint8), flat], axis=1)
    return np.packbits(flat, axis=1).reshape(-1)
