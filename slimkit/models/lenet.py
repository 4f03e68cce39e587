"""LeNet-300-100 and LeNet-5 (LeCun et al. 1998), the pruning literature's small baselines.

Both keep their layers as plain children (``classifier`` and ``features`` are
``nn.Sequential``), so a saved spec can replace, remove or insert layers freely.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch.nn as nn

from slimkit.models._common import check_num_classes, check_width, conv_out, image_shape, init_weights, scaled, seeded
from slimkit.nn.spec import serializable


@serializable
class LeNet300(nn.Module):
    """Flatten -> Linear(300) -> ReLU -> Linear(100) -> ReLU -> Linear(classes); hidden sizes times ``width``.

    Children: ``flatten``, ``classifier`` (``fc1, relu1, fc2, relu2, fc3``).
    """

    def __init__(self, input_shape, num_classes, width=1.0):
        super().__init__()
        width = check_width(width)
        num_classes = check_num_classes(num_classes)
        in_features = math.prod(int(s) for s in input_shape)
        h1, h2 = scaled(300, width), scaled(100, width)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(in_features, h1)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(h1, h2)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(h2, num_classes)),
        ]))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(x))


@serializable
class LeNet5(nn.Module):
    """conv(6, 5x5) -> pool -> conv(16, 5x5) -> pool -> fc 120 -> fc 84 -> classes, ReLU, max pooling.

    Adapted to small inputs: both convs use ``padding=2`` (size-preserving), and each 2x2
    max pool is applied only while the spatial size is at least 2, so 8x8 digits
    (8 -> 4 -> 2), 28x28 MNIST (28 -> 14 -> 7) and 32x32 CIFAR (32 -> 16 -> 8) all work.
    Channel and unit counts are multiplied by ``width``.

    Children: ``features`` (``conv1, relu1[, pool1], conv2, relu2[, pool2]``), ``flatten``,
    ``classifier`` (``fc1, relu1, fc2, relu2, fc3``).
    """

    def __init__(self, input_shape, num_classes, width=1.0):
        super().__init__()
        width = check_width(width)
        num_classes = check_num_classes(num_classes)
        c, h, w = image_shape(input_shape, "lenet5")
        c1, c2 = scaled(6, width), scaled(16, width)
        f1, f2 = scaled(120, width), scaled(84, width)
        layers = []
        channels = c
        for i, out in enumerate((c1, c2), start=1):
            layers += [(f"conv{i}", nn.Conv2d(channels, out, 5, padding=2)), (f"relu{i}", nn.ReLU())]
            h, w = conv_out(h, 5, 1, 2), conv_out(w, 5, 1, 2)
            if min(h, w) >= 2:
                layers.append((f"pool{i}", nn.MaxPool2d(2, 2)))
                h, w = h // 2, w // 2
            channels = out
        self.features = nn.Sequential(OrderedDict(layers))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(channels * h * w, f1)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(f1, f2)), ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(f2, num_classes)),
        ]))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def lenet300(input_shape, num_classes, *, width=1.0, seed=None):
    """LeNet-300-100; ``width`` scales the hidden units."""
    with seeded(seed):
        return LeNet300(list(input_shape), num_classes, width=width)


def lenet5(input_shape, num_classes, *, width=1.0, seed=None):
    """LeNet-5 adapted to small inputs; ``width`` scales channels and units."""
    with seeded(seed):
        return LeNet5(list(input_shape), num_classes, width=width)
