"""The exact value grids quantised weights live on: codebook lookup and int8 codes.

Pure math on tensors, shared by the quantised layers (:mod:`slimkit.nn.quantized`), the
methods that make them and the ``.slim`` codecs that store them (:mod:`slimkit.storage`),
so that none of them has to import another for it.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["min_index_bits", "codebook_indices", "int8_dequantize", "int8_codes"]


def min_index_bits(k: int) -> int:
    """The fewest bits (>= 1) that index ``k`` codebook entries."""
    return max(1, (max(k, 1) - 1).bit_length())


def codebook_indices(values: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    """Index into ``codebook`` of every value, matched bit for bit (first match on duplicates).

    Raises ValueError when a value is not in the codebook.
    """
    if values.dtype != torch.float32 or codebook.dtype != torch.float32:
        raise ValueError("codebook weights must be float32")
    cb = codebook.detach().cpu().contiguous().reshape(-1).view(torch.int32).numpy()
    vb = values.detach().cpu().contiguous().reshape(-1).view(torch.int32).numpy()
    if cb.size == 0:
        if vb.size:
            raise ValueError("an empty codebook cannot encode any weight")
        return np.zeros(0, np.int64)
    order = np.argsort(cb, kind="stable")
    ordered = cb[order]
    pos = np.clip(np.searchsorted(ordered, vb), 0, cb.size - 1)
    bad = ordered[pos] != vb
    if bad.any():
        first = values.reshape(-1)[int(np.flatnonzero(bad)[0])].item()
        raise ValueError(f"{int(bad.sum())} weight(s) are not codebook values (e.g. {first!r})")
    return order[pos].astype(np.int64)


def int8_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32, one scale per output channel (dimension 0)."""
    return q.to(torch.float32) * scale.to(torch.float32).reshape(-1, *([1] * (q.dim() - 1)))


def int8_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 ``q`` with ``int8_dequantize(q, scale) == weight`` bit for bit, or ValueError."""
    w = weight.detach().cpu().float()
    s = scale.detach().cpu().float().reshape(-1)
    if w.dim() == 0 or s.numel() != w.shape[0]:
        raise ValueError(f"{s.numel()} scales for a weight of shape {tuple(w.shape)}")
    safe = torch.where(s == 0, torch.ones_like(s), s).reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.round(w / safe)
    if not bool(torch.isfinite(q).all()) or bool((q.abs() > 127).any()):
        raise ValueError("weights are not on the int8 grid (|q| > 127)")
    q = q.to(torch.int8)
    back = int8_dequantize(q, s)
    if not torch.equal(back.view(torch.int32), w.contiguous().view(torch.int32)):
        raise ValueError("weights are not exactly q * scale")
    return q
