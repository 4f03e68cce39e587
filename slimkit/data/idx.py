"""Reader for IDX files (MNIST, Fashion-MNIST, KMNIST, notMNIST), raw or gzip-compressed.

Every header is checked against the bytes actually present before anything is
allocated from it, and a gzip stream is never decompressed past the size its
header announces.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from slimkit.errors import UserError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EXPECTED = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte (each optionally .gz)")
_CHUNK = 1 << 20


def _read_exact(stream, n: int, path: Path, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise UserError(f"{path}: truncated IDX file ({what}: expected {n} bytes, found {len(data)})")
    return data


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes whose magic number must be ``magic``."""
    path = Path(path)
    kind = {IMAGES_MAGIC: "image", LABELS_MAGIC: "label"}.get(magic, "IDX")
    ndim = magic & 0xFF
    try:
        if path.suffix == ".gz":
            stream = gzip.open(path, "rb")
            raw_size = None
        else:
            stream = open(path, "rb")
            raw_size = os.path.getsize(path)
        with stream:
            head = _read_exact(stream, 4, path, "magic number")
            found = int.from_bytes(head, "big")
            if found != magic:
                raise UserError(f"{path}: bad magic number {found} (expected {magic} for an IDX {kind} file); "
                                "is it the right file, and not an HTML page or a renamed archive?")
            dims = [int.from_bytes(_read_exact(stream, 4, path, "dimensions"), "big") for _ in range(ndim)]
            if any(d == 0 for d in dims):
                raise UserError(f"{path}: IDX header has an empty dimension {tuple(dims)}; expected a non-empty {kind} file")
            expected = 1
            for d in dims:
                expected *= d
            header = 4 + 4 * ndim
            if raw_size is not None:
                have = raw_size - header
                if have != expected:
                    state = "truncated" if have < expected else "has trailing bytes"
                    raise UserError(f"{path}: IDX {kind} file {state}: header says {' x '.join(map(str, dims))} = "
                                    f"{expected:,} bytes of data, file holds {have:,}")
                payload = stream.read(expected)
            else:
                chunks, have = [], 0
                while have <= expected:  # read at most one chunk past the announced size
                    block = stream.read(min(_CHUNK, expected + 1 - have))
                    if not block:
                        break
                    chunks.append(block)
                    have += len(block)
                if have != expected:
                    state = "truncated" if have < expected else "has trailing bytes"
                    shown = f"{have:,}" if have < expected else f"more than {expected:,}"
                    raise UserError(f"{path}: IDX {kind} file {state}: header says {' x '.join(map(str, dims))} = "
                                    f"{expected:,} bytes of data, file holds {shown}")
                payload = b"".join(chunks)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise UserError(f"{path}: not a valid gzip file ({exc}); expected a gzip-compressed IDX {kind} file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; expected an IDX {kind} file") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    if len(payload) != expected:
        raise UserError(f"{path}: IDX {kind} file has the wrong size (expected {expected:,} bytes of data, "
                        f"read {len(payload):,})")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    """``stem`` or its common variants (``.gz``; ``train-images.idx3-ubyte`` spelling)."""
    variants = [stem, stem.replace("-idx", ".idx")]
    for v in variants:
        for name in (v, v + ".gz"):
            p = directory / name
            if p.is_file():
                return p
    return None


def read_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path, Path] | None:
    """Images ``[N, H, W]`` and labels ``[N]`` of ``split`` ('train' or 't10k'); None if neither file exists."""
    img_stem, lab_stem = SPLIT_FILES[split]
    img_path, lab_path = _find(directory, img_stem), _find(directory, lab_stem)
    if img_path is None and lab_path is None:
        return None
    if img_path is None or lab_path is None:
        missing = img_stem if img_path is None else lab_stem
        present = (lab_path or img_path).name
        raise UserError(f"{directory}: found {present} but not {missing}[.gz]; expected the pair "
                        f"{img_stem}[.gz] and {lab_stem}[.gz]")
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lab_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{directory}: {img_path.name} holds {images.shape[0]:,} images but {lab_path.name} holds "
                        f"{labels.shape[0]:,} labels; expected the same count")
    return images, labels, img_path, lab_path


def _class_count(argument: str) -> tuple[str, int | None]:
    """``DIR`` or ``DIR@K`` (K: the number of classes) -> (directory, K or None)."""
    head, sep, tail = argument.rpartition("@")
    if not sep or Path(argument).expanduser().exists():
        return argument, None
    if not tail.isdigit() or int(tail) < 1:
        raise UserError(f"mnist:{argument}: {tail!r} is not a class count; expected mnist:DIR or mnist:DIR@K "
                        "with K >= 1, e.g. mnist:data@10")
    return head, int(tail)


def _checked_num_classes(labels: torch.Tensor, declared: int | None, directory) -> int:
    """The class count: ``declared`` (every label must be below it), or the largest label + 1.

    IDX labels are bytes, so a corrupt or placeholder label (often 255) would silently
    make a model with hundreds of classes. Without a declared count, every class from 0
    to the largest label must occur; otherwise the labels are refused.
    """
    top = int(labels.max())
    if declared is not None:
        if top >= declared:
            raise UserError(f"mnist:{directory}: a label is {top}, outside 0..{declared - 1} for the declared "
                            f"{declared} classes; fix the labels or declare more classes (mnist:DIR@K)")
        return declared
    counts = torch.bincount(labels, minlength=top + 1)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"mnist:{directory}: labels run up to {top} but classes {shown} have no example "
                        f"({int(counts[top])} example(s) labelled {top}: corrupt labels?); fix them, or declare "
                        f"the class count with mnist:DIR@K")
    return top + 1


def load_idx_dir(directory: str | os.PathLike, seed: int):
    """Load an MNIST-format directory as :class:`slimkit.data.RawData` (images ``[N, 1, H, W]`` in [0, 1]).

    With both the train and t10k pairs present they are the train and test splits;
    with only one pair, it is split 80/20 with ``seed`` (and the description says so).
    """
    from slimkit.data import RawData, split_indices

    directory, declared = _class_count(str(directory))
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise UserError(f"mnist: {directory} is not a directory; expected a folder holding {EXPECTED}")
    train = read_pair(d, "train")
    test = read_pair(d, "t10k")
    if train is None and test is None:
        raise UserError(f"mnist: no IDX files in {directory}; expected {EXPECTED}")
    parts = [p for p in (train, test) if p is not None]
    shapes = {p[0].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise UserError(f"mnist: train and t10k images in {directory} differ in size ({sorted(shapes)}); "
                        "expected the same height and width")
    h, w = parts[0][0].shape[1:]

    def to_x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    def to_y(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    if train is not None and test is not None:
        train_x, train_y, test_x, test_y = to_x(train[0]), to_y(train[1]), to_x(test[0]), to_y(test[1])
        description = (f"MNIST-format IDX files in {directory}: {len(train_y):,} train / {len(test_y):,} test "
                       f"images {h}x{w}")
    else:
        images, labels, img_path, _ = parts[0]
        which = "t10k" if test is not None else "train"
        x, y = to_x(images), to_y(labels)
        if len(y) < 2:
            raise UserError(f"mnist: {img_path} holds {len(y)} image; expected at least 2 to split into train and test")
        keep, held = split_indices(len(y), 0.2, seed, "idx-test")
        train_x, train_y, test_x, test_y = x[keep], y[keep], x[held], y[held]
        description = (f"MNIST-format {which} files in {directory} ({len(y):,} images {h}x{w}) split "
                       f"{len(keep):,} train / {len(held):,} test with seed {seed}")
    num_classes = _checked_num_classes(torch.cat([train_y, test_y]), declared, directory)
    return RawData(train_x, train_y, test_x, test_y, num_classes, kind="image", description=description,
                   classes=None, augment=False, flip=False)
