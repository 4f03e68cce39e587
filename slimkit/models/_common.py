"""Pieces shared by the zoo's architectures: initialisation, width scaling, argument checks."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from slimkit.errors import UserError


@torch.no_grad()
def init_weights(model: nn.Module) -> None:
    """The zoo's initialisation, the same for every model (and so reproducible under a fixed seed).

    Conv2d: Kaiming-normal, fan-out, ReLU gain (He et al. 2015), bias 0. BatchNorm: weight 1, bias 0.
    Linear: Kaiming-normal, fan-in, ReLU gain, bias 0. (torchvision's N(0, 0.01) suits a
    single classifier layer after BN'd convs but starves a stack of Linear layers such as
    LeNet-300-100 of signal: its loss barely moves for the first epochs.)
    Applies to subclasses too (MaskedConv2d, MaskedLinear).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest int, at least 1."""
    return max(1, int(round(channels * width)))


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise UserError(f"model option width must be a positive number, got {width!r}")
    return float(width)


def image_shape(input_shape, model: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` from an input shape, or a UserError naming the model."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"model {model!r} needs image inputs shaped (channels, height, width), "
                        f"got {tuple(input_shape)}")
    return shape


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise UserError(f"the number of classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def pooled(size: int) -> int:
    """Spatial size after ``MaxPool2d(2, 2)`` (floor)."""
    return size // 2


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@contextlib.contextmanager
def seeded(seed):
    """Run the body with torch's CPU generator seeded, restoring the caller's RNG state after.

    ``seed=None`` leaves the global generator alone (the engine seeds it for the run).
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"model option seed must be an integer, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
