"""Data sets, splits, normalisation, augmentation and batching.

A data set is contributed by a plugin's ``register_datasets`` hook as
``register(name, loader, summary)`` where ``loader(argument, seed)`` returns a
:class:`RawData` (train and test tensors in [0, 1]). :func:`load_data` turns that into
a :class:`DataBundle`: it carves a validation split from train with the run's seed,
computes normalisation statistics on the remaining train split only, and serves
normalised, optionally augmented batches, sharded across ranks when training is
distributed.

Everything lives in memory as tensors: batching indexes them directly (no
``DataLoader`` workers), which is what small compression experiments want.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from slimkit.errors import UserError

__all__ = ["RawData", "DataBundle", "load_data", "parse_spec", "split_indices", "derive_seed", "augment_images"]

SPLITS = ("train", "val", "test")


@dataclass
class RawData:
    """What a data set loader returns.

    ``train_x``/``test_x`` are ``[N, C, H, W]`` float32 in [0, 1] for images
    (``kind="image"``) or ``[N, F]`` float32 for vectors (``kind="vector"``);
    ``train_y``/``test_y`` are int64 labels in ``0..num_classes-1``. ``description``
    says where the data came from and how it was split (it appears in reports).

    ``augment`` is whether training augmentation is on by default for this data set
    and ``flip`` whether that augmentation includes horizontal flips (off for
    digit-like data: a mirrored 2 is not a 2).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    kind: str = "image"
    description: str = ""
    classes: list[str] | None = None
    augment: bool = False
    flip: bool = False


def derive_seed(*parts) -> int:
    """A 63-bit seed derived deterministically from ints and strings (stable across runs)."""
    words = []
    for p in parts:
        if isinstance(p, str):
            words.extend(p.encode("utf-8"))
        else:
            words.append(int(p) & 0xFFFFFFFFFFFFFFFF)
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def split_indices(n: int, fraction: float, seed: int, purpose: str = "split") -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (kept, held_out) with ``round(n * fraction)`` held out.

    The choice is a seeded random permutation (``seed`` and ``purpose`` select it);
    both index lists come back sorted so that the original order is kept.
    """
    n_out = int(round(n * fraction))
    if fraction > 0 and n_out == 0 and n > 1:
        n_out = 1
    n_out = min(n_out, max(n - 1, 0))
    g = torch.Generator().manual_seed(derive_seed(seed, purpose))
    perm = torch.randperm(n, generator=g)
    held = perm[:n_out].sort().values
    kept = perm[n_out:].sort().values
    return kept, held


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"name"`` -> ``("name", None)``; ``"name:argument"`` -> ``("name", "argument")``."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("empty data set spec: expected NAME or NAME:ARGUMENT, e.g. digits or mnist:DIR")
    name, sep, arg = spec.strip().partition(":")
    return name.strip(), (arg if sep and arg != "" else None)


def augment_images(x: torch.Tensor, generator: torch.Generator, *, pad: int | None = None, flip: bool = False,
                   fill: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop with padding (and optionally a horizontal flip) of a batch ``[B, C, H, W]``.

    Each image is padded by ``pad`` pixels on every side (default ``max(1, H // 8)``)
    with ``fill`` (per channel; default 0) and a random ``H x W`` window is cut out;
    with ``flip`` each image is mirrored with probability 1/2. Vectorised over the
    batch; all randomness comes from ``generator``.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_images expects [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if b == 0:
        return x
    p = max(1, h // 8) if pad is None else int(pad)
    out = x
    if p > 0:
        padded = x.new_empty((b, c, h + 2 * p, w + 2 * p))
        if fill is None:
            padded.zero_()
        else:
            padded.copy_(fill.to(x.dtype).view(1, c, 1, 1).expand_as(padded))
        padded[:, :, p:p + h, p:p + w] = x
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        # one gather over the flattened padded plane: window pixel (i, j) of image k is
        # padded pixel (oy[k] + i, ox[k] + j)
        wp = w + 2 * p
        window = (torch.arange(h)[:, None] * wp + torch.arange(w)[None, :]).view(1, 1, h * w)
        index = (window + (oy * wp + ox).view(b, 1, 1)).expand(b, c, h * w)
        out = padded.view(b, c, -1).gather(2, index).view(b, c, h, w)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1)
        out = torch.where(mask, out.flip(-1), out)
    return out


def _channel_stats(x: torch.Tensor, kind: str, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (images) or per-feature (vectors) mean and std (population), in two passes.

    Images are reduced per example in float32 (at most H*W values in [0, 1]) and
    then accumulated in float64, chunk by chunk, so no full-size copy is made.
    """
    n, width = x.shape[0], x.shape[1]
    per = max(1, x[0].numel() // width) if n else 1

    def reduce(part: torch.Tensor) -> torch.Tensor:  # [n, width] sums for one chunk
        if kind == "image":
            return part.flatten(2).sum(2).to(torch.float64)
        return part.to(torch.float64)

    total = torch.zeros(width, dtype=torch.float64)
    for start in range(0, n, chunk):
        total += reduce(x[start:start + chunk]).sum(0)
    count = max(n * per, 1)
    mean = total / count
    sq = torch.zeros(width, dtype=torch.float64)
    shape = (1, width, 1, 1) if kind == "image" else (1, width)
    mean32 = mean.to(x.dtype).view(shape)
    for start in range(0, n, chunk):
        dev = x[start:start + chunk] - mean32
        sq += reduce(dev * dev).sum(0)
    std = (sq / count).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.to(torch.float32), std.to(torch.float32)


class _Batches:
    """An iterable of ``(x, y)`` batches that knows its length."""

    def __init__(self, bundle: "DataBundle", x, y, indices: torch.Tensor, batch_size: int, drop_last: bool,
                 augment: bool, aug_seed: int):
        self._bundle = bundle
        self._x, self._y = x, y
        self._indices = indices
        self._batch_size = batch_size
        self._augment = augment
        self._aug_seed = aug_seed
        n = len(indices)
        self._n = n // batch_size if drop_last else math.ceil(n / batch_size)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, xb, yb in self.indexed():
            yield xb, yb

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The same batches as ``(indices, x, y)``: ``indices`` are the examples' positions in
        the split, e.g. to look up per-example data such as cached teacher outputs."""
        g = torch.Generator().manual_seed(self._aug_seed) if self._augment else None
        bs = self._batch_size
        for i in range(self._n):
            idx = self._indices[i * bs:(i + 1) * bs]
            xb = self._x[idx]
            yb = self._y[idx]
            if g is not None:
                xb = augment_images(xb, g, flip=self._bundle.flip, fill=self._bundle._black)
            yield idx, xb, yb


class DataBundle:
    """A data set ready for training: train/val/test splits, normalised, in memory.

    Attributes: ``name`` (the spec as given), ``description`` (source, split sizes and
    seed), ``input_shape`` (one example, e.g. ``(1, 28, 28)``), ``num_classes``,
    ``kind`` (``"image"`` or ``"vector"``), ``classes`` (names or None), ``mean`` and
    ``std`` (per channel, or per feature for vectors, computed on the train split
    only), ``seed``, ``augment`` (default augmentation of the train split) and
    ``flip`` (whether augmentation mirrors images).
    """

    def __init__(self, name: str, raw: RawData, *, seed: int = 0, val_fraction: float = 0.1,
                 augment: bool | None = None, flip: bool | None = None):
        raw = _checked(raw, name)
        if not (0.0 <= float(val_fraction) < 1.0):
            raise UserError(f"val_fraction={val_fraction} is out of range: expected a number in [0, 1)")
        self.name = name
        self.seed = int(seed)
        self.kind = raw.kind
        self.num_classes = int(raw.num_classes)
        self.classes = list(raw.classes) if raw.classes is not None else None
        self.input_shape = tuple(int(s) for s in raw.train_x.shape[1:])
        if augment and self.kind != "image":
            raise UserError(f"data set {name!r} holds vectors; augmentation needs image data (leave it off)")
        self.augment = bool(raw.augment if augment is None else augment) and self.kind == "image"
        self.flip = bool(raw.flip if flip is None else flip)
        self.val_fraction = float(val_fraction)

        n_all = raw.train_x.shape[0]
        if val_fraction > 0:
            keep, held = split_indices(n_all, val_fraction, self.seed, "val")
            train_x, train_y = raw.train_x[keep], raw.train_y[keep]
            val_x, val_y = raw.train_x[held], raw.train_y[held]
        else:
            train_x, train_y = raw.train_x, raw.train_y
            val_x, val_y = raw.train_x[:0], raw.train_y[:0]
        self.mean, self.std = _channel_stats(train_x, self.kind)
        self._x = {"train": self.normalize(train_x), "val": self.normalize(val_x), "test": self.normalize(raw.test_x)}
        self._y = {"train": train_y.contiguous(), "val": val_y.contiguous(), "test": raw.test_y.contiguous()}
        # a black pixel after normalisation: what crop padding fills in
        self._black = (-self.mean / self.std) if self.kind == "image" else None
        self.source = raw.description or name
        n_tr, n_va, n_te = (self.size(s) for s in SPLITS)
        val_text = (f"val {n_va:,} ({self.val_fraction:.0%} of train, seed {self.seed})" if n_va
                    else "no val split")
        self.description = (f"{self.source}; train {n_tr:,} / {val_text} / test {n_te:,}; "
                            f"{'x'.join(map(str, self.input_shape))}, {self.num_classes} classes")

    # -- access -----------------------------------------------------------------------------
    def _split(self, split: str):
        if split not in self._x:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return self._x[split], self._y[split]

    def size(self, split: str) -> int:
        """Number of examples in ``split`` ('train', 'val' or 'test')."""
        return int(self._split(split)[1].shape[0])

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as normalised ``(x, y)`` (shared storage: do not modify in place)."""
        return self._split(split)

    def subset(self, split: str, n: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples of ``split`` chosen at random (seeded; all of them if ``n`` >= size)."""
        x, y = self._split(split)
        if n >= len(y):
            return x, y
        g = torch.Generator().manual_seed(derive_seed(self.seed if seed is None else seed, "subset", split))
        idx = torch.randperm(len(y), generator=g)[:max(int(n), 0)].sort().values
        return x[idx], y[idx]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise raw inputs (images in [0, 1]) with this bundle's train statistics."""
        x = x.to(torch.float32)
        if self.kind == "image":
            return x.sub(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))
        return x.sub(self.mean).div_(self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`normalize` (e.g. to save images)."""
        if self.kind == "image":
            return x * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)
        return x * self.std + self.mean

    def with_split(self, split: str, x: torch.Tensor, y: torch.Tensor) -> "DataBundle":
        """A copy of this bundle whose ``split`` holds the given (already normalised) inputs and
        their class labels (0 to ``num_classes - 1``: the loop's targets are labels, nothing else)."""
        self._split(split)
        if tuple(x.shape[1:]) != self.input_shape or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"with_split: expected x of shape [N, {', '.join(map(str, self.input_shape))}] "
                             f"and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool or (
                y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes)):
            raise ValueError(f"with_split: y must be integer class labels in [0, {self.num_classes}); per-example "
                             "data that is not a label goes by the batch's indices (batches(...).indexed())")
        other = object.__new__(DataBundle)
        other.__dict__.update(self.__dict__)
        other._x = dict(self._x)
        other._y = dict(self._y)
        other._x[split] = x.to(torch.float32)
        other._y[split] = y
        return other

    # -- batching ---------------------------------------------------------------------------
    def indices(self, split: str, *, shuffle: bool = False, epoch: int = 0, seed: int | None = None,
                rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """The example indices of ``split`` that ``rank`` visits in ``epoch``, in order.

        They come from :class:`torch.utils.data.DistributedSampler` (shuffled with
        ``seed + epoch`` when ``shuffle``); with ``world_size > 1`` each rank gets
        ``ceil(N / world_size)`` of them, the last ranks padded with repeats so
        that every rank runs the same number of steps.
        """
        n = self.size(split)
        if world_size < 1 or not (0 <= rank < world_size):
            raise ValueError(f"rank={rank}, world_size={world_size}: expected world_size >= 1 and 0 <= rank < world_size")
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=bool(shuffle),
                                     seed=self.seed if seed is None else int(seed), drop_last=False)
        sampler.set_epoch(int(epoch))
        return torch.as_tensor(list(iter(sampler)), dtype=torch.long)

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, epoch: int = 0,
                seed: int | None = None, rank: int = 0, world_size: int = 1, augment: bool | None = None,
                drop_last: bool = False) -> _Batches:
        """Iterate over normalised ``(x, y)`` batches of ``split`` for this ``rank``.

        Shuffling is seeded by ``(seed, epoch)`` (``seed`` defaults to the bundle's), so
        an epoch is repeatable. ``augment=None`` applies the bundle's default to the
        train split only; ``True``/``False`` force it (it is a no-op for vectors).
        The returned iterable has a ``len()`` (number of batches).
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size}: expected a positive integer")
        x, y = self._split(split)
        seed = self.seed if seed is None else int(seed)
        idx = self.indices(split, shuffle=shuffle, epoch=epoch, seed=seed, rank=rank, world_size=world_size)
        use_aug = (self.augment and split == "train") if augment is None else bool(augment)
        use_aug = use_aug and self.kind == "image"
        aug_seed = derive_seed(seed, "augment", split, epoch, rank)
        return _Batches(self, x, y, idx, int(batch_size), bool(drop_last), use_aug, aug_seed)

    def num_batches(self, split: str, batch_size: int, *, world_size: int = 1, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields on each rank."""
        per_rank = math.ceil(self.size(split) / world_size) if self.size(split) else 0
        return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)

    def __repr__(self) -> str:
        return f"DataBundle({self.name!r}: {self.description})"


def _checked(raw: RawData, name: str) -> RawData:
    """Validate (and canonicalise dtypes of) what a loader returned; a broken plugin gets a clear error."""
    where = f"data set {name!r}"
    if not isinstance(raw, RawData):
        raise ValueError(f"{where}: the loader returned {type(raw).__name__}, expected slimkit.data.RawData")
    if raw.kind not in ("image", "vector"):
        raise ValueError(f"{where}: kind={raw.kind!r}, expected 'image' or 'vector'")
    want_dim = 4 if raw.kind == "image" else 2
    tensors = {}
    for attr in ("train_x", "train_y", "test_x", "test_y"):
        t = getattr(raw, attr)
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(np.asarray(t))
        tensors[attr] = t
    for part in ("train", "test"):
        x, y = tensors[f"{part}_x"], tensors[f"{part}_y"]
        if x.dim() != want_dim:
            raise ValueError(f"{where}: {part}_x has shape {tuple(x.shape)}, expected {want_dim} dimensions for "
                             f"{raw.kind} data")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{where}: {part}_y has shape {tuple(y.shape)}, expected [{x.shape[0]}]")
        if x.shape[0] == 0:
            raise UserError(f"{where} has an empty {part} split")
        if x.is_floating_point() is False:
            raise ValueError(f"{where}: {part}_x has dtype {x.dtype}, expected float32")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"{where}: {part}_y has dtype {y.dtype}, expected int64 labels")
    if tensors["train_x"].shape[1:] != tensors["test_x"].shape[1:]:
        raise ValueError(f"{where}: train examples {tuple(tensors['train_x'].shape[1:])} and test examples "
                         f"{tuple(tensors['test_x'].shape[1:])} differ in shape")
    k = int(raw.num_classes)
    if k < 1:
        raise ValueError(f"{where}: num_classes={k}, expected >= 1")
    for part in ("train", "test"):
        y = tensors[f"{part}_y"]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"{where}: {part} labels span {lo}..{hi}, expected 0..{k - 1}")
        if not bool(torch.isfinite(tensors[f"{part}_x"].sum())):  # NaN/inf anywhere makes the sum non-finite
            raise UserError(f"{where}: {part} inputs contain NaN or infinite values")
    if raw.classes is not None and len(raw.classes) != k:
        raise ValueError(f"{where}: {len(raw.classes)} class names for {k} classes")
    return RawData(
        tensors["train_x"].to(torch.float32).contiguous(), tensors["train_y"].to(torch.int64),
        tensors["test_x"].to(torch.float32).contiguous(), tensors["test_y"].to(torch.int64),
        k, raw.kind, raw.description, raw.classes, raw.augment, raw.flip,
    )


def load_data(spec: str, datasets: dict, seed: int = 0, val_fraction: float = 0.1,
              augment: bool | None = None, flip: bool | None = None) -> DataBundle:
    """Load the data set named by ``spec`` (``"name"`` or ``"name:argument"``).

    ``datasets`` maps names to registry entries (objects with ``.obj`` = the loader,
    see :class:`slimkit.plugins.Registered`) or to loaders directly. The validation
    split is carved from train with ``seed``; ``augment``/``flip`` ``None`` keep the
    data set's defaults (augmentation on for cifar and folder data, off for digits,
    mnist and synthetic; flips off for digit-like data).
    """
    name, arg = parse_spec(spec)
    if name not in datasets:
        raise UserError(f"unknown dataset {name!r}; available datasets: {', '.join(sorted(datasets)) or '(none)'}"
                        " (use NAME or NAME:ARGUMENT)")
    entry = datasets[name]
    loader = getattr(entry, "obj", entry)
    try:
        raw = loader(arg, int(seed))
    except UserError:
        raise
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read data set {spec!r}: {exc}") from None
    return DataBundle(spec, raw, seed=seed, val_fraction=val_fraction, augment=augment, flip=flip)
