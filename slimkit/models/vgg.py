"""CIFAR-style VGG (Simonyan & Zisserman 2015), with its convolution blocks exposed for structural methods.

Structure of a :class:`VGG`::

    features    nn.Sequential, one child per stage, named block1, block2, ...
      blockK    nn.Sequential: conv1, bn1, relu1, conv2, bn2, relu2, ..., pool
                (convs are 3x3, padding 1, stride 1; bnI absent with batch_norm=False;
                pool is MaxPool2d(2, 2), absent when the stage input is smaller than 2x2)
    avgpool     AdaptiveAvgPool2d(1)   (global average pooling)
    flatten     Flatten
    classifier  nn.Sequential: fc                                   ('single')
                or fc1, relu1, drop1, fc2, relu2, drop2, fc3        ('three')

Pooling on small inputs: a stage's 2x2 max pool is applied only while the spatial
size entering it is at least 2, so VGG-11 runs on 8x8 digits (8 -> 4 -> 2 -> 1 -> 1 -> 1)
and 28x28 MNIST (28 -> 14 -> 7 -> 3 -> 1 -> 1) as on 32x32 CIFAR (32 -> ... -> 1).
The classifier sees the channels of the last block after global average pooling,
so it does not depend on the image size.

:func:`conv_blocks` (also ``model.blocks``) lists the blocks with their channels;
:func:`collapse_block` replaces a block's convolutions by one convolution, keeping
its pool (the structural compression of Deep Net Triage, Nowak & Corso 2018).
Removing a same-shape conv from a block means deleting its ``convI``, ``bnI`` and
``reluI`` children; the block is a plain ``nn.Sequential`` so its forward follows.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch.nn as nn

from slimkit.errors import UserError
from slimkit.models._common import check_num_classes, check_width, image_shape, init_weights, scaled, seeded
from slimkit.nn.spec import serializable

CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # A
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # D
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],  # E
    # The reduced VGG-13 of Deep Net Triage's small-network experiments: half the channels, last stage 256.
    "minivgg": [32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"],
}

CLASSIFIERS = ("single", "three")


def _stages(cfg) -> list[list[int]]:
    """Split a cfg at its 'M' markers: one list of conv widths per stage."""
    stages, current = [], []
    for item in cfg:
        if item == "M":
            if not current:
                raise UserError(f"VGG cfg {cfg} has a pool with no convolution before it")
            stages.append(current)
            current = []
        elif isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            current.append(item)
        else:
            raise UserError(f"VGG cfg entries must be positive ints or 'M', got {item!r}")
    if current:  # trailing convs without a pool form a last stage
        stages.append(current)
    if not stages:
        raise UserError("VGG cfg has no convolution")
    return stages


@serializable
class VGG(nn.Module):
    """VGG with BatchNorm for small images; see the module docstring for the structure."""

    def __init__(self, input_shape, num_classes, cfg, width=1.0, batch_norm=True, classifier="single",
                 dropout=0.5):
        super().__init__()
        width = check_width(width)
        num_classes = check_num_classes(num_classes)
        if classifier not in CLASSIFIERS:
            raise UserError(f"VGG option classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
        if not isinstance(batch_norm, bool):
            raise UserError(f"VGG option batch_norm must be true or false, got {batch_norm!r}")
        channels, h, w = image_shape(input_shape, "vgg")
        blocks = []
        for k, stage in enumerate(_stages(cfg), start=1):
            layers = []
            for i, out in enumerate(stage, start=1):
                out = scaled(out, width)
                layers.append((f"conv{i}", nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm)))
                if batch_norm:
                    layers.append((f"bn{i}", nn.BatchNorm2d(out)))
                layers.append((f"relu{i}", nn.ReLU()))
                channels = out
            if min(h, w) >= 2:
                layers.append(("pool", nn.MaxPool2d(2, 2)))
                h, w = h // 2, w // 2
            blocks.append((f"block{k}", nn.Sequential(OrderedDict(layers))))
        self.features = nn.Sequential(OrderedDict(blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        if classifier == "single":
            head = [("fc", nn.Linear(channels, num_classes))]
        else:
            hidden = scaled(512, width)
            head = [("fc1", nn.Linear(channels, hidden)), ("relu1", nn.ReLU()), ("drop1", nn.Dropout(dropout)),
                    ("fc2", nn.Linear(hidden, hidden)), ("relu2", nn.ReLU()), ("drop2", nn.Dropout(dropout)),
                    ("fc3", nn.Linear(hidden, num_classes))]
        self.classifier = nn.Sequential(OrderedDict(head))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))

    @property
    def blocks(self) -> list["ConvBlock"]:
        """The convolution blocks, as :func:`conv_blocks` lists them."""
        return conv_blocks(self)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


class ConvBlock(NamedTuple):
    """One stage of ``model.features``: unpacks as ``(name, block)``; channels are read from the live convs.

    ``name`` is the qualified name (``"features.block2"``, usable with ``model.get_submodule``).
    ``in_channels``/``out_channels`` are those of the block's first and last Conv2d (subclasses
    included), so they stay right after a method edits the block; ``None`` when it has no conv.
    """

    name: str
    block: nn.Module

    @property
    def in_channels(self) -> int | None:
        convs = _convs(self.block)
        return convs[0].in_channels if convs else None

    @property
    def out_channels(self) -> int | None:
        convs = _convs(self.block)
        return convs[-1].out_channels if convs else None

    @property
    def convs(self) -> list[tuple[str, nn.Conv2d]]:
        """``(child name, conv)`` of the block's direct Conv2d children, in order."""
        return [(n, m) for n, m in self.block.named_children() if isinstance(m, nn.Conv2d)]

    @property
    def pool(self) -> nn.Module | None:
        """The block's ``pool`` child (MaxPool2d), or None when the stage does not downsample."""
        return self.block._modules.get("pool") if isinstance(self.block, nn.Sequential) else None


def conv_blocks(model: nn.Module) -> list[ConvBlock]:
    """Every child of ``model.features`` as ``ConvBlock(name, block)``, in forward order.

    Works for :class:`VGG` and any model whose ``features`` is an ``nn.Sequential`` of blocks.
    """
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise UserError(f"{type(model).__name__} has no `features` nn.Sequential of convolution blocks")
    return [ConvBlock(f"features.{name}", block) for name, block in features.named_children()]


def collapse_block(model: nn.Module, name: str) -> nn.Sequential:
    """Replace the convolutions of one block by a single 3x3 conv (+ BN + ReLU), keeping its pool.

    ``name`` is ``"block2"`` or ``"features.block2"``. The new conv maps the block's input
    channels to its output channels, so the rest of the model is unchanged; it is freshly
    initialised (train it afterwards). Returns the new block, already installed in ``model``.
    """
    short = name.split(".", 1)[1] if name.startswith("features.") else name
    entry = next((b for b in conv_blocks(model) if b.name == f"features.{short}"), None)
    if entry is None:
        raise UserError(f"no block {name!r}; blocks: {', '.join(b.name for b in conv_blocks(model))}")
    convs = _convs(entry.block)
    if not convs:
        raise UserError(f"block {name!r} has no convolution to collapse")
    batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in entry.block.modules())
    in_ch, out_ch = convs[0].in_channels, convs[-1].out_channels
    layers = [("conv1", nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batch_norm))]
    if batch_norm:
        layers.append(("bn1", nn.BatchNorm2d(out_ch)))
    layers.append(("relu1", nn.ReLU()))
    if entry.pool is not None:
        layers.append(("pool", entry.pool))
    new = nn.Sequential(OrderedDict(layers))
    init_weights(new)
    ref = convs[0].weight
    new.to(device=ref.device, dtype=ref.dtype)
    model.features._modules[short] = new
    return new


def _factory(cfg_name: str):
    def factory(input_shape, num_classes, *, width=1.0, batch_norm=True, classifier="single", dropout=0.5,
                seed=None):
        with seeded(seed):
            return VGG(list(input_shape), num_classes, CFGS[cfg_name], width=width, batch_norm=batch_norm,
                       classifier=classifier, dropout=dropout)

    factory.__name__ = factory.__qualname__ = cfg_name
    factory.__doc__ = f"{cfg_name}(input_shape, num_classes, width=1.0, batch_norm=True, classifier='single')"
    return factory


vgg11 = _factory("vgg11")
vgg13 = _factory("vgg13")
vgg16 = _factory("vgg16")
vgg19 = _factory("vgg19")
minivgg = _factory("minivgg")
