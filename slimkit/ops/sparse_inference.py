"""Converting a pruned model for sparse inference (``slimkit compress --sparse-inference``).

:func:`to_sparse_inference` replaces every convolution and fully connected layer that the
sparse kernels support by its CSR twin (:class:`slimkit.ops.conv.SparseConv2d`,
:class:`slimkit.ops.linear.SparseLinear`) and reports, per layer, whether it runs the
sparse kernel and why (each CSR weight picks the dense path itself below the sparsity
where sparse stops paying). Codebook- and int8-quantized layers stay as they are: their
stored form (a few bits per weight) is smaller than CSR's 32-bit value + 32-bit index.
"""
from __future__ import annotations

import torch.nn as nn

from slimkit.ops.conv import SparseConv2d, unsupported_reason
from slimkit.ops.linear import SparseLinear

__all__ = ["SparseLayerReport", "to_sparse_inference"]


class SparseLayerReport(tuple):
    """One layer of :func:`to_sparse_inference`: a (name, uses_sparse, sparsity) tuple with ``.reason``."""

    def __new__(cls, name: str, uses_sparse: bool, sparsity: float, reason: str = ""):
        self = super().__new__(cls, (name, bool(uses_sparse), float(sparsity)))
        self.reason = reason
        return self

    name = property(lambda self: self[0])
    uses_sparse = property(lambda self: self[1])
    sparsity = property(lambda self: self[2])

    def __repr__(self):
        return (f"SparseLayerReport(name={self[0]!r}, uses_sparse={self[1]}, sparsity={self[2]:.3f}, "
                f"reason={self.reason!r})")


def _kept_as_is(layer: nn.Module) -> str | None:
    """Why ``layer`` is not converted, or None."""
    from slimkit.nn.quantized import CodebookMixin, Int8Mixin

    if isinstance(layer, CodebookMixin):
        return "codebook-quantized: kept in its codebook form, smaller than CSR (runs dense)"
    if isinstance(layer, Int8Mixin):
        return "int8-quantized: kept in its int8 form, smaller than CSR (runs dense)"
    if isinstance(layer, nn.Conv2d):
        return unsupported_reason(layer)
    return None


def to_sparse_inference(model: nn.Module, min_sparsity: float | None = None) -> list[SparseLayerReport]:
    """Replace every convertible Conv2d/Linear (masked or not) of ``model`` by its CSR twin, in place.

    Returns one (name, uses_sparse, sparsity) per conv and linear layer, with ``.reason``.
    Layers under ``min_sparsity`` (default: each weight class's measured crossover)
    are converted too but run the dense op; grouped convs, non-zero padding modes and
    quantized layers stay as they are.
    """
    from slimkit.nn.masked import MaskedMixin

    reports = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (nn.Conv2d, nn.Linear)):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            weight = child.weight.detach()
            if isinstance(child, MaskedMixin):
                weight = weight * child.weight_mask
            sparsity = float((weight == 0).sum()) / weight.numel() if weight.numel() else 0.0
            problem = _kept_as_is(child)
            if problem:
                reports.append(SparseLayerReport(full, False, sparsity, problem))
                continue
            if isinstance(child, nn.Conv2d):
                new = SparseConv2d.from_conv(child, min_sparsity)
            else:
                new = SparseLinear.from_linear(child, min_sparsity)
            parent._modules[name] = new
            sw = new.sparse_weight
            reports.append(SparseLayerReport(full, sw.uses_sparse, sw.sparsity, sw.reason))
    return reports
