"""Fold eval-mode BatchNorm into the convolution or linear layer that feeds it.

``BN(conv(x)) = conv'(x)`` with ``w' = w * s`` per output channel and ``b' = (b - mean) * s
+ beta``, ``s = gamma / sqrt(running_var + eps)``. The identity is exact in real arithmetic;
in float32 the folded layer rounds differently from the two-step eager computation (a few
ulps), in float64 the two agree to ~1e-12 (tests/test_runtime.py checks both).

A zero weight stays exactly zero after scaling, so a CSR layer keeps its sparsity
pattern: :func:`fold_csr` rebuilds it from the scaled dense weight with the same
``min_sparsity``.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["bn_scale_shift", "fold_conv_bn", "fold_linear_bn", "fold_csr_bn", "fold_batchnorm"]


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with ``bn(y) = y * s + t`` per channel, from the running statistics."""
    var, mean = bn.running_var, bn.running_mean
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


@torch.no_grad()
def _folded(weight: torch.Tensor, bias: torch.Tensor | None, bn) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift = bn_scale_shift(bn)
    scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
    w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias.to(weight.dtype) * scale + shift
    return w, b


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d equal to ``bn(conv(x))`` in eval mode."""
    w, b = _folded(conv.weight, conv.bias, bn)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, True, conv.padding_mode).to(device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    new.bias.copy_(b)
    return new.eval()


@torch.no_grad()
def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A new Linear equal to ``bn(linear(x))`` in eval mode (2-D input)."""
    w, b = _folded(linear.weight, linear.bias, bn)
    new = nn.Linear(linear.in_features, linear.out_features, True).to(device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    new.bias.copy_(b)
    return new.eval()


@torch.no_grad()
def fold_csr_bn(layer, bn):
    """A new CSR layer (SparseConv2d / SparseLinear) equal to ``bn(layer(x))``, same sparsity pattern."""
    dense = layer.to_dense_module()
    if isinstance(dense, nn.Conv2d):
        folded = fold_conv_bn(dense, bn)
        new = type(layer).from_conv(folded, layer.min_sparsity)
    else:
        folded = fold_linear_bn(dense, bn)
        new = type(layer).from_linear(folded, layer.min_sparsity)
    return new.eval()


def _foldable(producer: nn.Module, bn: nn.Module) -> bool:
    from slimkit.nn.sparse import SparseConv2d
    from slimkit.nn.sparse import SparseLinear

    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.training or not bn.track_running_stats:
        return False
    if bn.running_mean is None:
        return False
    if type(producer) in (nn.Conv2d, SparseConv2d):
        return isinstance(bn, nn.BatchNorm2d) and bn.num_features == producer.out_channels
    if type(producer) in (nn.Linear, SparseLinear):
        return isinstance(bn, nn.BatchNorm1d) and bn.num_features == producer.out_features
    return False


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every ``call_module`` BatchNorm whose input is a conv/linear used by nothing else; returns how many."""
    from slimkit.nn.sparse import CSRLayer

    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        bn, producer = modules[node.target], modules[prev.target]
        if not _foldable(producer, bn):
            continue
        if isinstance(producer, CSRLayer):
            new = fold_csr_bn(producer, bn)
        elif isinstance(producer, nn.Conv2d):
            new = fold_conv_bn(producer, bn)
        else:
            new = fold_linear_bn(producer, bn)
        _set_submodule(gm, prev.target, new)
        modules[prev.target] = new
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return folded


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
