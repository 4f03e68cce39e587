"""Class-per-folder image data sets, read with Pillow.

Layouts (class names are the sorted folder names):

* ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (``DIR/val`` stands in for a
  missing ``DIR/test``);
* ``DIR/<class>/*`` (or ``DIR/train/<class>/*`` alone), split 80/20 with the seed.

Every image is resized to ``size x size`` (``folder:DIR@SIZE``, default 32) and
converted to one mode for the whole data set: ``L`` when every image is greyscale,
``RGB`` otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from slimkit.errors import UserError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
DEFAULT_SIZE = 32


def parse_argument(argument: str | None) -> tuple[Path, int]:
    """``"DIR"`` or ``"DIR@SIZE"`` -> (directory, size)."""
    if not argument:
        raise UserError("folder needs a directory: --data folder:DIR or folder:DIR@SIZE "
                        "(DIR/train/<class>/*.png and DIR/test/<class>/*, or DIR/<class>/*)")
    directory, size = argument, DEFAULT_SIZE
    head, sep, tail = argument.rpartition("@")
    if sep and tail.strip().isdigit():
        directory, size = head, int(tail)
        if not 1 <= size <= 1024:
            raise UserError(f"folder:{argument}: image size {size} is out of range; expected 1..1024")
    elif sep and not Path(argument).expanduser().exists():
        raise UserError(f"folder:{argument}: {tail!r} is not an image size; expected folder:DIR@SIZE, e.g. folder:imgs@32")
    return Path(directory).expanduser(), size


def _class_dirs(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))


def _scan(root: Path) -> dict[str, list[Path]]:
    return {d.name: _images_in(d) for d in _class_dirs(root)}


def _load_images(files: list[Path], size: int, mode: str) -> torch.Tensor:
    from PIL import Image

    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    resample = Image.Resampling.BILINEAR
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im = _to_mode(im, mode)
                if im.size != (size, size):
                    im = im.resize((size, size), resample)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"{path}: cannot read image ({exc}); expected a PNG/JPEG/BMP/GIF/WebP/TIFF file") from None
        out[i] = arr.reshape(size, size, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


def _to_mode(im, mode: str):
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") and mode == "L":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I") and arr.max() > 255 else 255.0
        from PIL import Image

        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La") or (im.mode == "P" and "transparency" in im.info):
        from PIL import Image

        rgba = im.convert("RGBA")  # transparent pixels become black
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert(mode)
    return im.convert(mode)


def _mode_of(files: list[Path]) -> str:
    from PIL import Image

    for path in files:
        try:
            with Image.open(path) as im:  # lazy: reads the header only
                if im.mode not in GREY_MODES:
                    return "RGB"
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"{path}: cannot read image ({exc}); expected a PNG/JPEG/BMP/GIF/WebP/TIFF file") from None
    return "L"


def load_folder(argument: str | None, seed: int = 0):
    """Load a class-per-folder image data set as :class:`slimkit.data.RawData`."""
    from slimkit.data import RawData, split_indices

    root, size = parse_argument(argument)
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UserError("folder data sets need Pillow: pip install pillow (or pip install slimkit[images])") from None
    if not root.is_dir():
        raise UserError(f"folder: {root} is not a directory; expected DIR/train/<class>/*.png and DIR/test/<class>/*, "
                        "or DIR/<class>/*")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir():
        train_map = _scan(root / "train")
        test_map = _scan(test_dir) if test_dir is not None else None
        where = f"{root}/train"
    else:
        train_map, test_map, where = _scan(root), None, str(root)
    train_map = {k: v for k, v in train_map.items() if v}
    if not train_map:
        raise UserError(f"folder: no images under {where}/<class>/; expected class folders of "
                        f"{', '.join(sorted(EXTENSIONS))} files")
    classes = sorted(train_map)
    index = {c: i for i, c in enumerate(classes)}

    def flatten(m: dict[str, list[Path]]):
        files, labels = [], []
        for c in sorted(m):
            files.extend(m[c])
            labels.extend([index[c]] * len(m[c]))
        return files, labels

    train_files, train_labels = flatten(train_map)
    if test_map is not None:
        test_map = {k: v for k, v in test_map.items() if v}
        unknown = sorted(set(test_map) - set(classes))
        if unknown:
            raise UserError(f"folder: {test_dir} has classes {', '.join(unknown)} that {root}/train lacks; "
                            "expected the same class folders in both")
        if not test_map:
            raise UserError(f"folder: no images under {test_dir}/<class>/; expected class folders of images")
        test_files, test_labels = flatten(test_map)
        all_files = train_files + test_files
    else:
        all_files = train_files
    mode = _mode_of(all_files)
    train_x = _load_images(train_files, size, mode)
    train_y = torch.tensor(train_labels, dtype=torch.int64)
    if test_map is not None:
        test_x = _load_images(test_files, size, mode)
        test_y = torch.tensor(test_labels, dtype=torch.int64)
        description = (f"image folders in {root} ({len(classes)} classes, {mode}, resized to {size}x{size}): "
                       f"{len(train_y):,} train / {len(test_y):,} test")
    else:
        if len(train_y) < 2:
            raise UserError(f"folder: {where} holds {len(train_y)} image; expected at least 2 to split into train and test")
        keep, held = split_indices(len(train_y), 0.2, seed, "folder-test")
        test_x, test_y = train_x[held], train_y[held]
        train_x, train_y = train_x[keep], train_y[keep]
        description = (f"image folders in {where} ({len(classes)} classes, {mode}, resized to {size}x{size}; "
                       f"{len(keep) + len(held):,} images) split {len(keep):,} train / {len(held):,} test with seed {seed}")
    return RawData(train_x, train_y, test_x, test_y, len(classes), kind="image", description=description,
                   classes=classes, augment=True, flip=True)


__all__ = ["load_folder", "parse_argument", "EXTENSIONS"]
