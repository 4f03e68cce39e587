"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"), small-input variant.

As in the common CIFAR ports, the stem and the second stage use stride 1 instead of 2,
so a 32x32 image is downsampled 8x (32 -> 4), 28x28 to 4x4 and 8x8 digits to 1x1.
Channel counts follow the paper's width multiplier rule: ``make_divisible(c * width, 8)``,
and the last 1x1 conv keeps 1280 channels unless ``width > 1``.

Structure of :class:`MobileNetV2`: ``features`` (``nn.Sequential``: ``stem`` conv-BN-ReLU6,
``block0 ... block16`` :class:`InvertedResidual`, ``head`` 1x1 conv-BN-ReLU6), ``avgpool``
(global), ``flatten``, ``classifier`` (``dropout``, ``fc``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from slimkit.models._common import check_num_classes, check_width, image_shape, init_weights, seeded
from slimkit.nn.spec import serializable

# (expansion t, output channels c, repeats n, first stride s); strides of the stem and the
# 24-channel stage are 1 here (2 in the ImageNet network).
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without going below 90% of ``value`` (the paper's code)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _conv_bn(in_ch, out_ch, kernel, stride=1, groups=1, relu=True):
    layers = [("conv", nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                                 bias=False)),
              ("bn", nn.BatchNorm2d(out_ch))]
    if relu:
        layers.append(("relu", nn.ReLU6()))
    return nn.Sequential(OrderedDict(layers))


@serializable
class InvertedResidual(nn.Module):
    """1x1 expansion -> 3x3 depthwise -> linear 1x1 projection, with a residual when shapes match.

    Children: ``expand`` (conv-BN-ReLU6, ``nn.Identity`` when ``expand_ratio == 1``), ``depthwise``
    (conv-BN-ReLU6), ``project`` (conv-BN). The residual is added when ``stride == 1`` and
    ``in_channels == out_channels``.
    """

    def __init__(self, in_channels, out_channels, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = _conv_bn(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = _conv_bn(hidden, out_channels, 1, relu=False)

    def forward(self, x):
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


@serializable
class MobileNetV2(nn.Module):
    """MobileNetV2 for small images; see the module docstring."""

    def __init__(self, input_shape, num_classes, width=1.0, dropout=0.2):
        super().__init__()
        width = check_width(width)
        num_classes = check_num_classes(num_classes)
        in_ch, _, _ = image_shape(input_shape, "mobilenetv2")
        channels = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers = [("stem", _conv_bn(in_ch, channels, 3, stride=1))]
        k = 0
        for t, c, n, s in SETTINGS:
            out = make_divisible(c * width)
            for i in range(n):
                layers.append((f"block{k}", InvertedResidual(channels, out, s if i == 0 else 1, t)))
                channels = out
                k += 1
        layers.append(("head", _conv_bn(channels, last, 1)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([("dropout", nn.Dropout(dropout)),
                                                     ("fc", nn.Linear(last, num_classes))]))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def mobilenetv2(input_shape, num_classes, *, width=1.0, dropout=0.2, seed=None):
    """MobileNetV2 for small images; ``width`` is the paper's width multiplier."""
    with seeded(seed):
        return MobileNetV2(list(input_shape), num_classes, width=width, dropout=dropout)
