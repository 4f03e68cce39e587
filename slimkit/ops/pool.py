"""2x2 / stride-2 max pooling with an optional ReLU in one pass: ``max_pool2x2``.

``torch.ops.slimkit.max_pool2x2(x, relu)`` is ``F.max_pool2d(x, 2, 2)`` (floor mode, no
padding) followed by ReLU when ``relu`` (csrc/cpu/max_pool.cpp): slimkit's runtime runs a
network's conv -> ReLU -> MaxPool2d(2) tails through it (:mod:`slimkit.runtime.pool`), one
read of the activation instead of an in-place ReLU and three strided maxima. ReLU commutes
with max, so pooling first and clamping the quarter-size result is exact; NaN propagates as
in ``max_pool2d``. Inference only (no autograd), CPU, float32 / float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimkit.ops import backend

__all__ = ["max_pool2x2", "max_pool2x2_reference"]

_registered = False


def _register_native():
    global _registered
    if _registered:
        return

    @torch.library.register_fake("slimkit::max_pool2x2")
    def _(input, relu):
        n, c, h, w = input.shape
        return input.new_empty((n, c, h // 2, w // 2))

    _registered = True


backend.on_load(_register_native)


def max_pool2x2_reference(input: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """What the op computes, in PyTorch."""
    y = F.max_pool2d(input, 2, 2)
    return F.relu(y) if relu else y


def max_pool2x2(input: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``relu(max_pool2d(input, 2, 2))`` (without the ReLU when ``relu`` is false) for a 4-D input:
    the native kernel when it runs on the input (CPU, float32 / float64, no gradient needed),
    the reference otherwise."""
    if (input.dim() != 4 or input.dtype not in (torch.float32, torch.float64)
            or (torch.is_grad_enabled() and input.requires_grad) or not backend.use_native(input, "slimkit::max_pool2x2")):
        return max_pool2x2_reference(input, relu)
    return torch.ops.slimkit.max_pool2x2.default(input, relu)
