"""2x2 / stride-2 max pooling as three elementwise maxima over strided views (exact).

ATen's CPU ``max_pool2d`` on NCHW float32 computes indices too and runs a scalar loop:
measured on the development machine (1 thread, 2 shared cores; fastest quartile of 30
calls) at (64, 32, 28, 28) 11.96 ms against 0.94 ms for the maxima, (64, 64, 14, 14)
6.35 against 0.48 ms, (64, 256, 3, 3) 0.53 against 0.07 ms, (1, 32, 28, 28) 0.165
against 0.087 ms; in VGG-11 at batch 64 the pools took 41 % of the runtime's time
before this pass. ``max`` is exact, so the outputs are identical (NaN propagates in both).
:func:`fast_max_pools` rewrites every ``nn.MaxPool2d`` / ``F.max_pool2d`` call of a graph
whose arguments are exactly kernel 2, stride 2, no padding, no dilation, floor mode,
no indices.

:func:`native_pools` then hands those pools to slimkit's kernel ``max_pool2x2``
(csrc/cpu/max_pool.cpp), with the ReLU before a pool fused into it: one pass that reads the
activation once and writes the quarter-size output, where the maxima and an in-place ReLU
make four passes (VGG-11 x0.5 at batch 64, 1 thread, medians of 41 interleaved calls:
2.29 against 5.00 ms for its four pools). It is applied only to a graph that already calls
slimkit's kernels: a graph of plain ATen ops stays exportable to the ``onnxruntime`` backend.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["max_pool_2x2", "fast_max_pools", "native_pools", "fuse_conv_pools"]


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2, 2)`` for a 4-D input (odd trailing rows / columns dropped, as floor mode does)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    top = torch.maximum(x[:, :, 0:h:2, 0:w:2], x[:, :, 0:h:2, 1:w:2])
    bottom = torch.maximum(x[:, :, 1:h:2, 0:w:2], x[:, :, 1:h:2, 1:w:2])
    return torch.maximum(top, bottom)


torch.fx.wrap("max_pool_2x2")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _is_2x2(kernel, stride, padding, dilation, ceil_mode, return_indices) -> bool:
    stride = kernel if stride is None or stride == [] or stride == () else stride
    return (_pair(kernel) == (2, 2) and _pair(stride) == (2, 2) and _pair(padding) == (0, 0)
            and _pair(dilation) == (1, 1) and not ceil_mode and not return_indices)


def _matches(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module" and type(modules.get(node.target)) is nn.MaxPool2d:
        m = modules[node.target]
        return len(node.args) == 1 and _is_2x2(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                                               m.return_indices)
    if node.op == "call_function" and node.target is F.max_pool2d:
        names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
        args = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
        return "kernel_size" in args and _is_2x2(args["kernel_size"], args["stride"], args["padding"],
                                                 args["dilation"], args["ceil_mode"], args["return_indices"])
    return False


def fast_max_pools(gm: fx.GraphModule) -> int:
    """Rewrite the 2x2 / stride-2 max pools of ``gm`` on 4-D inputs; returns how many."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if not _matches(node, modules):
            continue
        meta = getattr(node.args[0], "meta", {}).get("tensor_meta")
        if meta is None or len(meta.shape) != 4:
            continue
        _replace(gm, node, max_pool_2x2, (node.args[0],))
        count += 1
    return _finish(gm, count)


def _replace(gm: fx.GraphModule, node: fx.Node, target, args) -> None:
    """Put a call of ``target(*args)`` (with ``node``'s shape metadata) in place of ``node``."""
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(target, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _finish(gm: fx.GraphModule, count: int) -> int:
    if count:
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
    return count


def _relu_input(node: fx.Node, modules: dict):
    """The input of ``node`` if it is a ReLU (module, function or method, in place or not), else None."""
    if not node.args or len(node.args) != 1 or node.kwargs.get("inplace"):
        return None
    if ((node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU)
            or (node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_))
            or (node.op == "call_method" and node.target in ("relu", "relu_"))):
        return node.args[0]
    return None


def native_pools(gm: fx.GraphModule) -> int:
    """Rewrite the :func:`max_pool_2x2` calls of ``gm`` (after :func:`fast_max_pools`) into
    ``torch.ops.slimkit.max_pool2x2``, a ReLU whose only user is the pool fused into it;
    returns how many. The caller checks that the native op runs on the graph's inputs."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not max_pool_2x2:
            continue
        src, relu = node.args[0], False
        relu_node = src
        inner = _relu_input(src, modules) if isinstance(src, fx.Node) and len(src.users) == 1 else None
        if inner is not None:
            src, relu = inner, True
        _replace(gm, node, torch.ops.slimkit.max_pool2x2.default, (src, relu))
        if relu:
            gm.graph.erase_node(relu_node)
        count += 1
    return _finish(gm, count)


def fuse_conv_pools(gm: fx.GraphModule) -> int:
    """Rewrite ``max_pool2x2(sparse_conv2d(...), relu=True)``, where the pool is the convolution's
    only user, into one ``sparse_conv2d_relu_pool(...)`` call (same arguments): each image's
    full-size activation is pooled while it is still in the computing core's cache and never
    goes to memory (VGG-11 x0.5's 28x28 layer writes 6.4 MB at batch 64 that the pool read
    back). Returns how many; the caller checks that the fused op runs on the graph's inputs."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.slimkit.max_pool2x2.default:
            continue
        conv, relu = node.args
        if (not relu or not isinstance(conv, fx.Node) or conv.target is not torch.ops.slimkit.sparse_conv2d.default
                or len(conv.users) != 1):
            continue
        meta = conv.meta.get("tensor_meta")
        if meta is not None and (meta.shape[-2] < 2 or meta.shape[-1] < 2):
            continue
        _replace(gm, node, torch.ops.slimkit.sparse_conv2d_relu_pool.default, tuple(conv.args))
        gm.graph.erase_node(conv)
        count += 1
    return _finish(gm, count)
