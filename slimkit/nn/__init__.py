"""Module building blocks that slimkit can save, rebuild and compress, and model surgery.

Every layer type lives here (masked, quantised, sparse inference), with the one way to
change a model: :func:`replace_layer`, :func:`effective_weight`, :func:`to_masked`,
:func:`to_plain`, :func:`to_sparse_inference`. Functional ops are in :mod:`slimkit.ops`.
"""
from contextlib import contextmanager

from slimkit.nn.spec import BUILTINS, ModuleRegistry, serializable, storage_hints, type_name
from slimkit.nn.masked import MaskedConv2d, MaskedLinear, MaskedMixin, prunable_layers, to_masked, to_plain, zero_pruned
from slimkit.nn.quantized import (CodebookMixin, Int8Conv2d, Int8Linear, Int8Mixin, QuantizedConv2d, QuantizedLinear,
                                  codebook_layers, quantizable_layers, quantized_twin)
from slimkit.nn.lowrank import LOWRANK_MODULES, LowRankConv2d, LowRankLinear
from slimkit.nn.sparse import CSRLayer, SparseConv2d, SparseLayerReport, SparseLinear, to_sparse_inference
from slimkit.nn.surgery import capture, effective_weight, forward_hooks, replace_layer

@contextmanager
def eval_mode(model):
    """Put every module of ``model`` in eval mode for the block, then restore each
    module's own train/eval flag (not just the top-level one)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


__all__ = ["eval_mode", "BUILTINS", "ModuleRegistry", "serializable", "storage_hints", "type_name", "MaskedConv2d", "MaskedLinear",
           "MaskedMixin", "prunable_layers", "to_masked", "to_plain", "zero_pruned",
           "CodebookMixin", "Int8Mixin", "QuantizedLinear", "QuantizedConv2d", "Int8Linear", "Int8Conv2d",
           "quantized_twin", "quantizable_layers", "codebook_layers",
           "CSRLayer", "SparseConv2d", "SparseLinear", "SparseLayerReport", "to_sparse_inference",
           "replace_layer", "effective_weight", "capture", "forward_hooks", "LowRankConv2d", "LowRankLinear"]
