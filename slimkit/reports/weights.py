"""Per-layer weight histograms before and after compression, as inline SVG.

The weights of a layer are its *effective dense* kernel: masked and sparse (CSR) layers
are decoded with :func:`slimkit.export.dense_model`; a layer that exposes
``dense_weight()`` (a low-rank factorisation) contributes its product and its factors
are not listed again. Zeros are left out of the histogram after compression (a pruned
layer would otherwise be one spike at 0) and counted in the caption instead. Weight-
shared layers (a ``weight_codebook`` buffer, from ``quantize`` or ``sws``) get their
centroids drawn; an ``sws`` stage's learned mixture is drawn over the histogram of all
compressed weights, scaled to counts.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.reports.figures import histogram_chart

BINS = 48


@torch.no_grad()
def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> effective dense weight (float32, CPU) of every conv/linear-like layer."""
    from slimkit.export import dense_model

    plain = dense_model(model)
    out: dict[str, torch.Tensor] = {}
    covered: list[str] = []
    for name, m in plain.named_modules():
        if any(name.startswith(c + ".") for c in covered):
            continue
        if callable(getattr(m, "dense_weight", None)):
            out[name] = m.dense_weight().detach().float().cpu()
            covered.append(name)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = m.weight.detach().float().cpu()
    return out


def codebooks(model: nn.Module) -> dict[str, list[float]]:
    """Layer name -> its shared weight values, for weight-shared layers."""
    return {name: [float(v) for v in m.weight_codebook.flatten()]
            for name, m in model.named_modules() if isinstance(getattr(m, "weight_codebook", None), torch.Tensor)}


def _hist(values: torch.Tensor, lo: float, hi: float) -> list[int]:
    if values.numel() == 0:
        return [0] * BINS
    return [int(c) for c in torch.histc(values.double(), bins=BINS, min=lo, max=hi).round().long()]


def _edges(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        lo, hi = lo - 1e-3, hi + 1e-3
    return [lo + (hi - lo) * i / BINS for i in range(BINS + 1)]


def _range(*tensors: torch.Tensor) -> tuple[float, float]:
    parts = [t for t in tensors if t.numel()]
    if not parts:
        return -1.0, 1.0
    lo = min(float(t.min()) for t in parts)
    hi = max(float(t.max()) for t in parts)
    return (lo - 1e-3, hi + 1e-3) if hi <= lo else (lo, hi)


def layer_histograms(before: nn.Module | None, after: nn.Module) -> list[dict]:
    """One entry per layer of ``after``: ``{"layer", "svg", "zeros", "total", "caption"}``."""
    w_after = layer_weights(after)
    w_before = layer_weights(before) if before is not None else {}
    books = codebooks(after)
    panels = []
    for i, (name, w) in enumerate(w_after.items()):
        flat = w.flatten()
        nonzero = flat[flat != 0]
        prev = w_before.get(name)
        prev_flat = prev.flatten() if prev is not None else torch.empty(0)
        lo, hi = _range(prev_flat, nonzero)
        bins = _edges(lo, hi)
        # Before and after on shared bins but their own count axes: a pruned layer keeps
        # few weights, which would be flat under the baseline's peak on one axis.
        svg = ""
        if prev is not None:
            svg = histogram_chart(f"hist-{i}-before", bins, [{"label": "before", "color": "#7f7f7f",
                                                               "counts": _hist(prev_flat, bins[0], bins[-1])}],
                                  title=f"{name}: before", width=260)
        svg += histogram_chart(f"hist-{i}", bins, [{"label": "after (non-zero)", "color": "#1f77b4",
                                                     "counts": _hist(nonzero, bins[0], bins[-1])}],
                               title=f"{name}: after", width=260, markers=books.get(name, ()))
        zeros = flat.numel() - nonzero.numel()
        caption = f"{zeros:,} of {flat.numel():,} weights are zero after"
        if prev is not None and tuple(prev.shape) != tuple(w.shape):
            caption += f"; shape {tuple(prev.shape)} -> {tuple(w.shape)}"
        if name in books:
            caption += f"; {len(books[name])} shared values"
        panels.append({"layer": name, "svg": svg, "zeros": zeros, "total": flat.numel(), "caption": caption})
    return panels


def mixture_panel(after: nn.Module, mixture: dict) -> str:
    """All compressed non-zero weights with an sws mixture (its non-zero components) over them."""
    weights = layer_weights(after)
    if not weights:
        return ""
    flat = torch.cat([w.flatten() for w in weights.values()])
    nonzero = flat[flat != 0]
    means, stds, mixing = mixture.get("means", []), mixture.get("stds", []), mixture.get("mixing", [])
    lo, hi = _range(nonzero, torch.tensor([m for m in means if m != 0] or [0.0]))
    bins = _edges(lo, hi)
    width = bins[1] - bins[0]
    centres = [(a + b) / 2 for a, b in zip(bins[:-1], bins[1:])]
    total = flat.numel()
    curve = []
    for x in centres:
        dens = sum(p * math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                   for m, s, p in zip(means, stds, mixing) if m != 0 and s > 0)
        curve.append(dens * total * width)
    return histogram_chart("sws-mixture", bins, [{"label": "non-zero weights", "counts": _hist(nonzero, lo, hi)}],
                           title="sws: all compressed weights and the learned mixture", width=520, height=240,
                           markers=[m for m in means if m != 0], curve=curve,
                           curve_label="mixture, non-zero components (scaled to counts)")
