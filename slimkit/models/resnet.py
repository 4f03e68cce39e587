"""Residual networks (He et al. 2016, "Deep Residual Learning for Image Recognition").

``resnet20``/``resnet56``: the paper's CIFAR networks, 3 stages of n BasicBlocks
(n = 3, 9) with 16/32/64 channels. ``resnet18``: the ImageNet ResNet-18 stages
(64/128/256/512, two blocks each) behind a CIFAR stem (3x3 conv, stride 1, no max pool).
Shortcuts that change shape are 1x1 conv + BN projections (the paper's option B),
so every weight lives in a child module and a saved spec rebuilds exactly.

Structure of a :class:`ResNet`: ``conv1, bn1, relu`` (stem), ``layer1 ... layerN``
(``nn.Sequential`` of :class:`BasicBlock` named ``0, 1, ...``; the first block of every
stage after the first has stride 2), ``avgpool`` (global), ``flatten``, ``fc``.
"""
from __future__ import annotations

import torch.nn as nn

from slimkit.errors import UserError
from slimkit.models._common import check_num_classes, check_width, image_shape, init_weights, scaled, seeded
from slimkit.nn.spec import serializable


@serializable
class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Children: ``conv1, bn1, relu, conv2, bn2, shortcut`` (``nn.Identity`` when the shape is kept,
    else ``nn.Sequential(conv, bn)`` with a 1x1 strided conv). ``relu`` is used twice.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False))
            self.shortcut.add_module("bn", nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@serializable
class ResNet(nn.Module):
    """A CIFAR-stem ResNet of BasicBlocks: ``num_blocks[i]`` blocks of ``channels[i] * width`` channels in stage i."""

    def __init__(self, input_shape, num_classes, num_blocks, channels, width=1.0):
        super().__init__()
        width = check_width(width)
        num_classes = check_num_classes(num_classes)
        in_ch, _, _ = image_shape(input_shape, "resnet")
        if not num_blocks or len(num_blocks) != len(channels) or min(num_blocks) < 1:
            raise UserError(f"ResNet needs one positive block count per stage, got {num_blocks} for {channels}")
        widths = [scaled(c, width) for c in channels]
        self.conv1 = nn.Conv2d(in_ch, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.num_stages = len(widths)
        prev = widths[0]
        for i, (n, c) in enumerate(zip(num_blocks, widths)):
            stage = nn.Sequential()
            for j in range(n):
                stage.add_module(str(j), BasicBlock(prev, c, stride=2 if (i > 0 and j == 0) else 1))
                prev = c
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def resnet20(input_shape, num_classes, *, width=1.0, seed=None):
    """ResNet-20 for CIFAR: 3 stages x 3 BasicBlocks, 16/32/64 channels."""
    with seeded(seed):
        return ResNet(list(input_shape), num_classes, [3, 3, 3], [16, 32, 64], width=width)


def resnet56(input_shape, num_classes, *, width=1.0, seed=None):
    """ResNet-56 for CIFAR: 3 stages x 9 BasicBlocks, 16/32/64 channels."""
    with seeded(seed):
        return ResNet(list(input_shape), num_classes, [9, 9, 9], [16, 32, 64], width=width)


def resnet18(input_shape, num_classes, *, width=1.0, seed=None):
    """ResNet-18 stages (64/128/256/512, 2 BasicBlocks each) with a CIFAR stem."""
    with seeded(seed):
        return ResNet(list(input_shape), num_classes, [2, 2, 2, 2], [64, 128, 256, 512], width=width)
