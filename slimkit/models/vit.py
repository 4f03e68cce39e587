"""A small vision transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Structure of a :class:`ViT`: ``patch_embed`` (a ``patch x patch`` conv with stride
``patch``: one token per patch), ``cls_token`` and ``pos_embed`` (parameters),
``blocks`` (``nn.Sequential`` of pre-norm :class:`Block`: ``norm1, attn, norm2, fc1,
fc2``, GELU between the two), ``norm``, ``head`` (a Linear on the class token).

:class:`Attention` projects with four plain ``nn.Linear`` layers (``q, k, v, proj``) and
splits q, k, v into heads with ``view(batch, tokens, -1, head_dim)``: the head count
follows the projections' width, so structured pruning can remove whole heads (rows of
q, k, v and columns of ``proj``) and the module still runs, and a saved pruned model
rebuilds from its layers' sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.errors import UserError
from slimkit.models._common import check_num_classes, image_shape, seeded
from slimkit.nn.spec import serializable


@serializable
class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension, savable in a ``.slim`` file."""

    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps=eps)


@serializable
class Attention(nn.Module):
    """Multi-head self-attention; heads of ``head_dim`` features, as many as ``q`` has rows for."""

    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise UserError(f"ViT: dim {dim} is not divisible by heads {heads}")
        self.head_dim = dim // heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, -1, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, -1))


@serializable
class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + fc2(gelu(fc1(norm2(x))))``."""

    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.attn = LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.fc1, self.fc2 = LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def default_patch(h: int, w: int) -> int:
    """The smallest patch size dividing both sides whose grid has at most 16 tokens."""
    return next(p for p in range(1, max(h, w) + 1) if h % p == 0 and w % p == 0 and (h // p) * (w // p) <= 16)


@serializable
class ViT(nn.Module):
    """A vision transformer for small images; see the module docstring."""

    def __init__(self, input_shape, num_classes, dim=64, depth=4, heads=4, patch=None, mlp_ratio=2.0):
        super().__init__()
        num_classes = check_num_classes(num_classes)
        c, h, w = image_shape(input_shape, "vit")
        patch = default_patch(h, w) if patch is None else patch
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads), ("patch", patch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"ViT option {name} must be a positive integer, got {value!r}")
        if h % patch or w % patch:
            raise UserError(f"ViT: patch {patch} does not divide the input size {h}x{w}")
        tokens = (h // patch) * (w // patch)
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init()

    @torch.no_grad()
    def _init(self):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, tokens, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit(input_shape, num_classes, *, dim=64, depth=4, heads=4, patch=None, mlp_ratio=2.0, seed=None):
    """A small ViT; ``patch`` defaults to the smallest that gives at most a 4x4 grid of tokens."""
    with seeded(seed):
        return ViT(list(input_shape), num_classes, dim=dim, depth=depth, heads=heads, patch=patch,
                   mlp_ratio=mlp_ratio)
