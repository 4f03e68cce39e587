"""Readers for CIFAR-10 and CIFAR-100: the binary version and the python (pickle) version.

The python batches are pickles. They are read with :class:`SafeUnpickler`, which
rebuilds numpy arrays, dicts, lists, strings and numbers and refuses every other
global a pickle may name (a pickle can otherwise run arbitrary code when loaded).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from slimkit.errors import UserError

PIXELS = 3 * 32 * 32


# -- a restricted unpickler -----------------------------------------------------------------
def _numpy_globals() -> dict:
    """The numpy callables needed to rebuild arrays, under every module name numpy has used."""
    import numpy

    try:
        from numpy._core import multiarray as ma, numeric as nu  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma, numeric as nu
    table = {("numpy", "ndarray"): numpy.ndarray, ("numpy", "dtype"): numpy.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = ma._reconstruct
        table[(mod, "scalar")] = ma.scalar
    frombuffer = getattr(nu, "_frombuffer", None)
    if frombuffer is not None:
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            table[(mod, "_frombuffer")] = frombuffer
    return table


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, and for nothing else."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain data and numpy arrays; any other global raises :class:`UserError`."""

    _allowed: dict | None = None

    def __init__(self, file, *, source: str = "pickle", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source
        if SafeUnpickler._allowed is None:
            allowed = _numpy_globals()
            allowed[("_codecs", "encode")] = _latin1_encode
            allowed[("builtins", "bytes")] = bytes
            allowed[("builtins", "bytearray")] = bytearray
            SafeUnpickler._allowed = allowed

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UserError(f"{self.source}: refused to unpickle {module}.{name}; a CIFAR python batch may only "
                            "hold numpy arrays, lists, dicts, strings and numbers (is the file tampered with?)")
        return obj

    def persistent_load(self, pid):
        raise UserError(f"{self.source}: refused a pickle with persistent references; expected plain data")


def safe_load_pickle(path: Path):
    """Load a pickle file with :class:`SafeUnpickler` (``encoding="bytes"``, as CIFAR's python-2 pickles need)."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, source=str(path), encoding="bytes").load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError) as exc:
        raise UserError(f"{path}: not a valid CIFAR python batch ({type(exc).__name__}: {exc})") from None


def _key(d: dict, name: str):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    return None


# -- binary version -----------------------------------------------------------------------------
def _read_binary(path: Path, label_bytes: int, label_index: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + PIXELS
    size = os.path.getsize(path)
    if size == 0 or size % record:
        raise UserError(f"{path}: {size:,} bytes is not a whole number of {record}-byte CIFAR records "
                        "(truncated or not a CIFAR binary batch)")
    data = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    labels = data[:, label_index].astype(np.int64)
    if labels.max() >= num_classes:
        raise UserError(f"{path}: label {int(labels.max())} out of range; expected 0..{num_classes - 1} "
                        "(CIFAR-10 records are 3073 bytes, CIFAR-100 records 3074)")
    images = data[:, label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def _read_names(path: Path, count: int) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return names if len(names) == count else None


# -- python version -----------------------------------------------------------------------------
def _read_python(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise UserError(f"{path}: holds a {type(batch).__name__}; expected a dict with 'data' and '{label_key}'")
    data, labels = _key(batch, "data"), _key(batch, label_key)
    if data is None or labels is None:
        raise UserError(f"{path}: missing key 'data' or '{label_key}'; expected a CIFAR python batch")
    try:
        data = np.asarray(data)
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: bad data or labels ({exc})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise UserError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 [N, {PIXELS}]")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: {labels.shape} labels of type {labels.dtype} for {data.shape[0]} images; "
                        "expected one integer label per image")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path}: labels span {labels.min()}..{labels.max()}; expected 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _python_names(path: Path, key: str, count: int) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        meta = safe_load_pickle(path)
    except UserError:
        return None
    names = _key(meta, key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != count:
        return None
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


# -- layouts -------------------------------------------------------------------------------------
LAYOUTS = {
    # name: list of (subfolder, train files, test files, format, meta)
    "cifar10": [
        ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], "bin"),
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "py"),
    ],
    "cifar100": [
        ("cifar-100-binary", ["train.bin"], ["test.bin"], "bin"),
        ("cifar-100-python", ["train"], ["test"], "py"),
    ],
}


def _expected_text(name: str) -> str:
    parts = []
    for sub, train, test, _ in LAYOUTS[name]:
        files = train + test
        shown = f"{files[0]}..{files[-2]}, {files[-1]}" if len(files) > 2 else " and ".join(files)
        parts.append(f"{sub}/ ({shown})")
    return " or ".join(parts)


def load_cifar(name: str, directory: str | os.PathLike | None, seed: int = 0):
    """Load CIFAR-10 or CIFAR-100 (``name``) from ``directory`` (the batch folder or its parent)."""
    from slimkit.data import RawData

    if not directory:
        raise UserError(f"{name} needs a directory: --data {name}:DIR with {_expected_text(name)}")
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UserError(f"{name}: {directory} is not a directory; expected a folder with {_expected_text(name)}")
    num_classes = 10 if name == "cifar10" else 100
    partial = []
    for sub, train_files, test_files, fmt in LAYOUTS[name]:
        for folder in (root, root / sub):
            if not folder.is_dir():
                continue
            present = [f for f in train_files + test_files if (folder / f).is_file()]
            if not present:
                continue
            missing = [f for f in train_files + test_files if f not in present]
            if missing:
                partial.append(f"{folder} lacks {', '.join(missing)}")
                continue
            return _load_layout(name, folder, train_files, test_files, fmt, num_classes, RawData)
    if partial:
        raise UserError(f"{name}: incomplete data set: {'; '.join(partial)} (expected {_expected_text(name)})")
    raise UserError(f"{name}: no CIFAR batches in {directory}; expected {_expected_text(name)}")


def _load_layout(name, folder, train_files, test_files, fmt, num_classes, RawData):
    if fmt == "bin":
        label_bytes, label_index = (1, 0) if name == "cifar10" else (2, 1)  # CIFAR-100: coarse, fine

        def read(f):
            return _read_binary(folder / f, label_bytes, label_index, num_classes)

        if name == "cifar10":
            classes = _read_names(folder / "batches.meta.txt", num_classes)
        else:
            classes = _read_names(folder / "fine_label_names.txt", num_classes)
    else:
        label_key = "labels" if name == "cifar10" else "fine_labels"

        def read(f):
            return _read_python(folder / f, label_key, num_classes)

        if name == "cifar10":
            classes = _python_names(folder / "batches.meta", "label_names", num_classes)
        else:
            classes = _python_names(folder / "meta", "fine_label_names", num_classes)

    def gather(files):
        parts = [read(f) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        x = torch.from_numpy(images).to(torch.float32).div_(255.0)
        return x, torch.from_numpy(labels)

    train_x, train_y = gather(train_files)
    test_x, test_y = gather(test_files)
    version = "binary" if fmt == "bin" else "python"
    title = "CIFAR-10" if name == "cifar10" else "CIFAR-100 (fine labels)"
    description = f"{title} {version} batches in {folder}: {len(train_y):,} train / {len(test_y):,} test images 3x32x32"
    return RawData(train_x, train_y, test_x, test_y, num_classes, kind="image", description=description,
                   classes=classes, augment=True, flip=True)
