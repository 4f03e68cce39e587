"""Layers whose weights carry a pruning mask.

The mask is a buffer (``weight_mask``, same shape as the weight, 0 or 1) applied on
every forward while gradients are recorded, so pruned weights contribute nothing and
get no gradient. The training loop also zeroes them after every optimizer step
(momentum and weight decay would otherwise move them), so a pruned weight is exactly
zero in the saved model. Because of that invariant (``weight == weight * mask`` outside a training
step), inference without autograd skips the multiply and costs what a dense layer
costs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit import ops
from slimkit.nn.spec import serializable
from slimkit.nn.surgery import effective_weight


class MaskedMixin:
    weight: torch.Tensor
    weight_mask: torch.Tensor

    def _init_mask(self):
        self.register_buffer("weight_mask", torch.ones_like(self.weight))

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        self.weight_mask.copy_(mask.to(self.weight_mask.dtype))
        self.weight.mul_(self.weight_mask)

    @torch.no_grad()
    def zero_pruned(self) -> None:
        self.weight.mul_(self.weight_mask)


@serializable
class MaskedConv2d(MaskedMixin, nn.Conv2d):
    """conv2d(x, weight * mask) through ``slimkit.ops.masked_conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._init_mask()

    def forward(self, x):
        if not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        return ops.masked_conv2d(x, self.weight, self.weight_mask, self.bias, self.stride, self.padding,
                                 self.dilation, self.groups)


@serializable
class MaskedLinear(MaskedMixin, nn.Linear):
    """linear(x, weight * mask)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias)
        self._init_mask()

    def forward(self, x):
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight * self.weight_mask, self.bias)


def prunable_layers(model: nn.Module):
    """(name, module) of every conv and linear layer, in definition order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def to_masked(model: nn.Module) -> nn.Module:
    """Replace every Conv2d/Linear by its masked twin (weights kept, mask all ones), in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                new = MaskedConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                   child.padding, child.dilation, child.groups, child.bias is not None)
            elif type(child) is nn.Linear:
                new = MaskedLinear(child.in_features, child.out_features, child.bias is not None)
            else:
                continue
            new.to(device=child.weight.device, dtype=child.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            parent._modules[name] = new
    return model


def zero_pruned(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, MaskedMixin):
            m.zero_pruned()


def to_plain(model: nn.Module) -> nn.Module:
    """Replace masked layers by plain Conv2d/Linear holding weight * mask, in place.

    The result is the dense fp32 model a user would have without slimkit's masks:
    the reference for "how much smaller is the compressed file".
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MaskedConv2d):
                new = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups, child.bias is not None)
            elif isinstance(child, MaskedLinear):
                new = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            else:
                continue
            new.to(device=child.weight.device, dtype=child.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(effective_weight(child))
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            parent._modules[name] = new
    return model
