"""A small deterministic data set for tests and smoke runs.

``synthetic`` draws each example from a class prototype (a smooth random pattern)
plus a random contrast, a small shift and Gaussian noise, so that a small model
learns it well above chance but not trivially; everything is seeded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimkit.errors import UserError

SYNTH_FORMAT = ("synthetic, synthetic:NxCxHxW (N train examples of C x H x W, e.g. 512x1x8x8) or "
                "synthetic:NxF (vectors of F features), optionally @K for K classes (default 10)")


def parse_synthetic(argument: str | None) -> tuple[int, tuple[int, ...], int]:
    """-> (train count, example shape, classes)."""
    n, shape, k = 512, (1, 8, 8), 10
    if argument:
        text, sep, classes = argument.strip().partition("@")
        try:
            if sep:
                k = int(classes)
            if text:
                dims = [int(t) for t in text.lower().split("x")]
                if len(dims) not in (2, 4):
                    raise ValueError
                n, shape = dims[0], tuple(dims[1:])
        except ValueError:
            raise UserError(f"synthetic:{argument} is not understood; expected {SYNTH_FORMAT}") from None
        if n < 2 or k < 2 or any(d < 1 for d in shape) or n * max(1, _prod(shape)) > 50_000_000:
            raise UserError(f"synthetic:{argument} is out of range; expected N >= 2, K >= 2, positive sizes "
                            "and at most 50 million values")
    return n, shape, k


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def load_synthetic(argument: str | None, seed: int = 0):
    from slimkit.data import RawData, derive_seed

    n_train, shape, k = parse_synthetic(argument)
    n_test = max(k, n_train // 4)
    g = torch.Generator().manual_seed(derive_seed(seed, "synthetic", *shape, k))
    image = len(shape) == 3
    if image:
        c, h, w = shape
        # smooth prototypes: coarse random grids upsampled to H x W
        coarse = torch.rand(k, c, max(2, (h + 1) // 2), max(2, (w + 1) // 2), generator=g)
        protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    else:
        protos = torch.rand(k, shape[0], generator=g)
    protos = (protos - protos.amin(dim=tuple(range(1, protos.dim())), keepdim=True))
    protos = protos / protos.amax(dim=tuple(range(1, protos.dim())), keepdim=True).clamp_min(1e-6)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = protos[y].clone()
        contrast = 0.6 + 0.4 * torch.rand((n,) + (1,) * len(shape), generator=g)
        x = x * contrast
        if image and h > 2 and w > 2:  # shift by up to one pixel
            dy = torch.randint(-1, 2, (n,), generator=g)
            dx = torch.randint(-1, 2, (n,), generator=g)
            for sy in (-1, 0, 1):
                for sx in (-1, 0, 1):
                    m = (dy == sy) & (dx == sx)
                    if m.any() and (sy or sx):
                        x[m] = torch.roll(x[m], shifts=(sy, sx), dims=(2, 3))
        x = x + 0.25 * torch.randn(x.shape, generator=g)
        return x.clamp_(0.0, 1.0).to(torch.float32), y.to(torch.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    dims = "x".join(map(str, shape)) if image else f"{shape[0]}-feature vector"
    return RawData(train_x, train_y, test_x, test_y, k, kind="image" if image else "vector",
                   description=(f"synthetic {dims} prototypes + noise, {k} classes: {n_train:,} train / "
                                f"{n_test:,} test, seed {seed}"),
                   classes=[str(i) for i in range(k)], augment=False, flip=False)
