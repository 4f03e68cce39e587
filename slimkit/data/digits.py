"""scikit-learn's bundled 8x8 handwritten digits: slimkit's default data set (no download)."""
from __future__ import annotations

import torch

from slimkit.errors import UserError


def load_digits(argument: str | None, seed: int = 0):
    """scikit-learn's bundled 8x8 digits (1,797 images; shipped with the package) split 80/20 with ``seed``."""
    from slimkit.data import RawData, split_indices

    if argument:
        raise UserError(f"digits takes no argument (got {argument!r}); use --data digits")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise UserError("digits needs scikit-learn: pip install scikit-learn") from None
    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images).to(torch.float32).div_(16.0).unsqueeze(1)  # [N, 1, 8, 8]
    y = torch.from_numpy(bunch.target).to(torch.int64)
    keep, held = split_indices(len(y), 0.2, seed, "digits-test")
    return RawData(x[keep], y[keep], x[held], y[held], 10, kind="image",
                   description=(f"scikit-learn digits 8x8 ({len(y):,} images) split {len(keep):,} train / "
                                f"{len(held):,} test with seed {seed}"),
                   classes=[str(i) for i in range(10)], augment=False, flip=False)
