"""Factorized layers: a convolution as a vertical then a horizontal one (Tai et al. 2016), a
fully connected layer as two thinner ones (a truncated SVD). The ``lowrank`` method makes
them; any method or user model may use them, and ``.slim`` files store them by these names.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.nn.spec import serializable

def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@serializable
class LowRankConv2d(nn.Module):
    """A k_h x k_w convolution C -> N as a vertical (k_h x 1) conv C -> K then a horizontal (1 x k_w) conv K -> N.

    Children: ``vertical`` (no bias), ``horizontal`` (carries the bias) and, with
    ``bn=True``, ``bn`` (BatchNorm2d over the N outputs). ``padding`` is a pair of ints.
    """

    slimkit_type_aliases = ("slimkit_plugins.lowrank.LowRankConv2d",)  # its name before it moved into slimkit.nn

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", bn=False):
        super().__init__()
        kh, kw = _pair(kernel_size)
        sh, sw = _pair(stride)
        ph, pw = _pair(padding)
        dh, dw = _pair(dilation)
        rank = int(rank)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_channels, self.out_channels, self.rank = int(in_channels), int(out_channels), rank
        self.kernel_size, self.stride, self.padding, self.dilation = (kh, kw), (sh, sw), (ph, pw), (dh, dw)
        self.vertical = nn.Conv2d(in_channels, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                                  bias=False, padding_mode=padding_mode)
        self.horizontal = nn.Conv2d(rank, out_channels, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                                    bias=bool(bias), padding_mode=padding_mode)
        if bn:
            self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        y = self.horizontal(self.vertical(x))
        bn = self._modules.get("bn")
        return bn(y) if bn is not None else y

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The equivalent ``[N, C, kh, kw]`` kernel ``sum_k V_k^c(h) H_n^k(w)`` (BN not included)."""
        v = self.vertical.weight[..., 0]  # [K, C, kh]
        h = self.horizontal.weight[:, :, 0, :]  # [N, K, kw]
        return torch.einsum("kcy,nkx->ncyx", v, h)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}")


@serializable
class LowRankLinear(nn.Module):
    """Linear in -> out as ``first`` (in -> K, no bias) then ``second`` (K -> out, the bias)."""

    slimkit_type_aliases = ("slimkit_plugins.lowrank.LowRankLinear",)  # its name before it moved into slimkit.nn

    def __init__(self, in_features, out_features, rank, bias=True):
        super().__init__()
        rank = int(rank)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bool(bias))

    def forward(self, x):
        return self.second(self.first(x))

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        return self.second.weight @ self.first.weight

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, rank={self.rank}"


LOWRANK_MODULES = (LowRankConv2d, LowRankLinear)
