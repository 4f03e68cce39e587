"""Convolutions on 1x1 feature maps become fully connected layers (exact).

On a 1x1 input with zero padding, a k x k convolution with a 1x1 output reads one tap of
its kernel: ``(ph / dh, pw / dw)`` when that is a whole tap inside the kernel; every other
tap multiplies padding zeros. So ``conv(x) = linear(x.flatten(1), W[:, :, th, tw], b)``
reshaped to (N, out, 1, 1), with 1/(kh*kw) of the multiply-accumulates. VGG's last block
on small inputs (MNIST's 28x28 reaches 1x1 after four poolings) spends most of its dense
MACs there: VGG-11 width 0.5 has 2 x 590 K of them per image, 2 x 65 K after this.

A CSR conv (``SparseConv2d``) becomes a ``SparseLinear`` with the tap's slice (its own
sparsity, and its own kernel-or-dense decision in :mod:`slimkit.runtime.lower`); a plain
``nn.Conv2d`` an ``nn.Linear``. The rewrite needs the shapes of one propagation
(``tensor_meta``) and is applied before the CSR layers are lowered.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["convs_on_single_pixels"]


def _tap(layer) -> tuple[int, int] | None:
    """The one kernel tap a 1x1 input meets, or None if it meets none (then keep the conv)."""
    taps = []
    for k, p, d in zip(layer.kernel_size, layer.padding, layer.dilation):
        if p % d or p // d >= k:
            return None
        taps.append(p // d)
    return taps[0], taps[1]


def _as_linear(layer, tap) -> nn.Module:
    from slimkit.nn.sparse import SparseConv2d
    from slimkit.nn.sparse import SparseLinear

    th, tw = tap
    if isinstance(layer, SparseConv2d):
        dense = layer.to_dense_module()
        linear = nn.Linear(dense.in_channels, dense.out_channels, dense.bias is not None).to(dense.weight)
        with torch.no_grad():
            linear.weight.copy_(dense.weight[:, :, th, tw])
            if dense.bias is not None:
                linear.bias.copy_(dense.bias)
        return SparseLinear.from_linear(linear).eval()
    linear = nn.Linear(layer.in_channels, layer.out_channels, layer.bias is not None).to(layer.weight)
    with torch.no_grad():
        linear.weight.copy_(layer.weight[:, :, th, tw])
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear.eval()


def _eligible(layer) -> bool:
    from slimkit.nn.sparse import SparseConv2d

    if type(layer) is SparseConv2d:
        return True
    return (type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def convs_on_single_pixels(gm: fx.GraphModule) -> list[str]:
    """Rewrite every eligible conv whose input and output are 1x1 (by ``tensor_meta``); returns their names."""
    modules = dict(gm.named_modules())
    done = []
    shapes = {node: (tuple(node.args[0].meta["tensor_meta"].shape), tuple(node.meta["tensor_meta"].shape))
              for node in gm.graph.nodes if node.op == "call_module" and _eligible(modules[node.target])
              and "tensor_meta" in node.meta and "tensor_meta" in getattr(node.args[0], "meta", {})}
    for node, (in_shape, out_shape) in shapes.items():  # read first: the rewrites add nodes without shapes
        layer, src = modules[node.target], node.args[0]
        if len(in_shape) != 4 or in_shape[2:] != (1, 1) or out_shape[2:] != (1, 1):
            continue
        tap = _tap(layer)
        if tap is None:
            continue
        name = node.target.replace(".", "_") + "_as_linear"
        gm.add_submodule(name, _as_linear(layer, tap))
        with gm.graph.inserting_before(node):
            flat = gm.graph.call_method("flatten", (src, 1))
            linear = gm.graph.call_module(name, (flat,))
            out = gm.graph.call_method("reshape", (linear, -1, out_shape[1], 1, 1))
        node.replace_all_uses_with(out)
        done.append(node.target)
        gm.graph.erase_node(node)
    if done:
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return done
