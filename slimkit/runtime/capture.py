"""Capture a whole model as one torch.fx graph, ready for the runtime's passes.

:func:`capture` deep-copies the model, decodes masked and quantized layers to plain
``nn.Conv2d`` / ``nn.Linear`` holding the weights they compute with (``weight * mask``;
quantized layers already hold dequantized values, so eager and runtime multiply the
same numbers), keeps the CSR inference layers (``SparseConv2d``, ``SparseLinear``) as
leaves so that they can be lowered to slimkit's kernels, symbolically traces the rest,
and drops the eval-mode no-ops (Dropout, Identity).
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
import torch.nn as nn

from slimkit.errors import UserError

__all__ = ["capture"]

_NO_OPS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


class _Tracer(fx.Tracer):
    """torch.nn built-ins and slimkit's CSR layers are leaves; everything else is traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from slimkit.nn.sparse import CSRLayer

        return isinstance(m, CSRLayer) or super().is_leaf_module(m, qualname)


def _drop_no_ops(gm: fx.GraphModule) -> int:
    modules = dict(gm.named_modules())
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], _NO_OPS) and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped += 1
    return dropped


def capture(model: nn.Module) -> fx.GraphModule:
    """The eval-mode fx graph of ``model`` (a copy; the model itself is not changed)."""
    from slimkit.nn import to_plain

    plain = copy.deepcopy(model)
    to_plain(plain)
    plain.eval()
    for p in plain.parameters():
        p.requires_grad_(False)
    try:
        graph = _Tracer().trace(plain)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"runtime: cannot capture the model as one graph (torch.fx): {type(exc).__name__}: "
                        f"{first}") from None
    gm = fx.GraphModule(plain, graph, type(plain).__name__)
    _drop_no_ops(gm)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.eval()
    return gm


def example_input(shape, batch: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """A fixed random batch ``(batch, *shape)`` for tracing, checking and timing."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((int(batch), *(int(s) for s in shape)), generator=g, dtype=dtype)
