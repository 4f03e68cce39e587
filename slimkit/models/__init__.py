"""slimkit's model zoo (registered through :mod:`slimkit.models.zoo`) and model-size counters.

:func:`count_params`, :func:`count_nonzero` and :func:`count_macs` work on any model;
they see pruning masks (a ``weight_mask`` buffer, as :class:`slimkit.nn.MaskedConv2d`,
or ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.nn import effective_weight, eval_mode, forward_hooks

__all__ = ["count_params", "count_nonzero", "count_macs"]

# Layers whose multiply-accumulates count_macs measures (subclasses included).
_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _buffer_weights(model: nn.Module):
    """Modules that keep their weight (and maybe bias) in buffers, e.g. a CSR sparse conv:
    they report the dense weight they stand for through ``weight_counts() -> (n, nonzero)``
    (and its shape, output units first, as ``weight_shape``)."""
    for m in model.modules():
        if callable(getattr(m, "weight_counts", None)):
            bias = m._buffers.get("bias")
            yield m, m.weight_counts(), bias if isinstance(bias, torch.Tensor) else None


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters once; buffers such as masks excluded;
    a weight held in buffers by a ``weight_counts()`` module counts as its dense size)."""
    total = sum(p.numel() for p in model.parameters())
    for _, (n, _nz), bias in _buffer_weights(model):
        total += n + (bias.numel() if bias is not None else 0)
    return total


def _mask_for(module: nn.Module, name: str):
    """The pruning mask buffer that applies to parameter ``name`` of ``module``, or None."""
    buffers = module._buffers
    mask = buffers.get(f"{name}_mask")
    if mask is None and name.endswith("_orig"):  # torch.nn.utils.prune keeps weight_orig + weight_mask
        mask = buffers.get(f"{name[:-5]}_mask")
    return mask if isinstance(mask, torch.Tensor) else None


@torch.no_grad()
def count_nonzero(model: nn.Module) -> int:
    """Exact number of nonzero parameter elements; a masked parameter counts as ``param * mask``."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            mask = _mask_for(module, name)
            total += int(torch.count_nonzero(p * mask if mask is not None and mask.shape == p.shape else p))
    for _, (_n, nz), bias in _buffer_weights(model):
        total += nz + (int(torch.count_nonzero(bias)) if bias is not None else 0)
    return total


@torch.no_grad()
def count_macs(model: nn.Module, input_shape, *, layers: bool = False) -> dict:
    """Multiply-accumulates of one example, measured by running it through ``model``.

    Forward hooks on every Conv1d/2d/3d and Linear (subclasses included, at any depth, and
    counted once per call) count ``output positions x weight elements``: for a conv that is
    output elements x in_channels/groups x kh x kw, for a Linear in x out (per row).
    Returns ``{"dense": ..., "nonzero": ...}``; ``nonzero`` counts only nonzero (unmasked)
    weights: nonzero weights x output positions. Biases, BatchNorm, activations and pooling
    are not counted. With ``layers=True`` the dict also has ``"layers"``: qualified name ->
    ``{"dense", "nonzero"}``. The model runs once in eval mode on zeros shaped
    ``(1, *input_shape)``; every module's train/eval mode is restored afterwards.
    """
    names = {id(m): n for n, m in model.named_modules()}
    per_layer: dict[str, dict[str, int]] = {}
    totals = {"dense": 0, "nonzero": 0}

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if callable(getattr(module, "weight_counts", None)):  # weight held in buffers (sparse conv / linear)
            n, nz = module.weight_counts()
            positions = out.numel() // module.weight_shape[0]  # weight_shape[0]: output channels / features
            dense, nonzero = positions * n, positions * nz
        else:
            channels = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
            positions = out.numel() // channels
            dense = positions * module.weight.numel()
            nonzero = positions * int(torch.count_nonzero(effective_weight(module)))
        totals["dense"] += dense
        totals["nonzero"] += nonzero
        entry = per_layer.setdefault(names.get(id(module), type(module).__name__), {"dense": 0, "nonzero": 0})
        entry["dense"] += dense
        entry["nonzero"] += nonzero

    counted = [(m, hook) for m in model.modules()
               if isinstance(m, _MAC_LAYERS) or callable(getattr(m, "weight_counts", None))]
    ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    x = torch.zeros((1, *tuple(int(s) for s in input_shape)), device=ref.device if ref is not None else "cpu",
                    dtype=ref.dtype if ref is not None else torch.float32)
    with forward_hooks(counted), eval_mode(model):
        model(x)
    result = dict(totals)
    if layers:
        result["layers"] = per_layer
    return result
