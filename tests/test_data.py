"""Tests of slimkit.data: readers, splits, normalisation, augmentation, batching."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.data import DataBundle, RawData, augment_images, load_data, parse_spec, split_indices
from slimkit.data import builtin
from slimkit.data.cifar import SafeUnpickler, safe_load_pickle
from slimkit.data.idx import load_idx_dir, read_idx
from slimkit.errors import UserError

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def datasets():
    table = {}

    def register(name, loader, summary=""):
        assert name not in table
        table[name] = loader

    builtin.register_datasets(register)
    return table


# -- IDX ------------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> Path:
    data = idx_bytes(array, magic)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_idx_dir(root: Path, *, n_train=30, n_test=12, h=5, w=7, gz=True, seed=0, pairs=("train", "t10k")):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        if split not in pairs:
            continue
        imgs = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        labs = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte", imgs, 2051, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte", labs, 2049, gz)
        out[split] = (imgs, labs)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_exact(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz=gz)
    raw = load_idx_dir(tmp_path, seed=0)
    imgs, labs = arrays["train"]
    assert raw.train_x.shape == (30, 1, 5, 7) and raw.train_x.dtype == torch.float32
    assert torch.equal(raw.train_x, torch.from_numpy(imgs).float().div(255).unsqueeze(1))
    assert torch.equal(raw.train_y, torch.from_numpy(labs.astype(np.int64)))
    timgs, tlabs = arrays["t10k"]
    assert torch.equal(raw.test_x, torch.from_numpy(timgs).float().div(255).unsqueeze(1))
    assert torch.equal(raw.test_y, torch.from_numpy(tlabs.astype(np.int64)))
    assert raw.kind == "image" and raw.num_classes == int(max(labs.max(), tlabs.max())) + 1
    # the low-level reader returns the exact bytes
    suffix = ".gz" if gz else ""
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", 2051), imgs)


def test_idx_only_t10k_is_split_80_20_and_described(tmp_path):
    arrays = make_idx_dir(tmp_path, n_test=50, pairs=("t10k",))
    raw = load_idx_dir(tmp_path, seed=3)
    assert len(raw.train_y) == 40 and len(raw.test_y) == 10
    assert "40 train / 10 test" in raw.description and "seed 3" in raw.description
    # every image lands in exactly one split
    imgs = torch.from_numpy(arrays["t10k"][0]).float().div(255).unsqueeze(1)
    together = torch.cat([raw.train_x, raw.test_x])
    assert sorted(map(bytes, (together * 255).round().to(torch.uint8).flatten(1).numpy())) == \
        sorted(map(bytes, (imgs * 255).round().to(torch.uint8).flatten(1).numpy()))


def test_idx_bad_magic_names_file(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(p.read_bytes())
    data[2:4] = b"\x08\x01"  # 2049: a label file's magic
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*magic number 2049.*2051"):
        load_idx_dir(tmp_path, 0)


def test_idx_truncated_raw_and_gz(tmp_path):
    make_idx_dir(tmp_path / "raw", gz=False)
    p = tmp_path / "raw" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_idx_dir(tmp_path / "raw", 0)

    make_idx_dir(tmp_path / "gz", gz=True)
    p = tmp_path / "gz" / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-1]))
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte\.gz.*truncated"):
        load_idx_dir(tmp_path / "gz", 0)

    # a gzip file cut in the middle of the stream
    make_idx_dir(tmp_path / "cut", gz=True)
    p = tmp_path / "cut" / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz"):
        load_idx_dir(tmp_path / "cut", 0)


def test_idx_header_claiming_huge_size_is_rejected_without_allocating(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    # header announces 4e9 x 60000 x 60000 bytes; the file holds a few hundred
    p.write_bytes(struct.pack(">IIII", 2051, 4_000_000_000, 60000, 60000) + b"\0" * 100)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*truncated"):
        load_idx_dir(tmp_path, 0)
    q = tmp_path / "train-labels-idx1-ubyte"
    q.unlink()
    write_idx(q, np.zeros(30, np.uint8), 2049, gz=True)
    p.unlink()
    p2 = tmp_path / "train-images-idx3-ubyte.gz"
    p2.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 4_000_000_000, 60000, 60000) + b"\0" * 100))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz.*truncated"):
        load_idx_dir(tmp_path, 0)


def test_idx_trailing_bytes_rejected(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes() + b"\0\0")
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.*trailing"):
        load_idx_dir(tmp_path, 0)
    make_idx_dir(tmp_path / "gz", gz=True)
    p = tmp_path / "gz" / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()) + b"\0"))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz.*trailing"):
        load_idx_dir(tmp_path / "gz", 0)


def test_idx_count_mismatch(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(11, np.uint8), 2049, gz=True)
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz holds 12 images but t10k-labels-idx1-ubyte\.gz holds 11"):
        load_idx_dir(tmp_path, 0)


def test_idx_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path, 0)
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"not t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path, 0)
    with pytest.raises(UserError, match=r"not a directory.*train-images-idx3-ubyte"):
        load_idx_dir(tmp_path / "nope", 0)


def test_mnist_needs_a_directory(datasets):
    with pytest.raises(UserError, match=r"mnist:DIR.*t10k-images-idx3-ubyte"):
        load_data("mnist", datasets)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"real MNIST not present at {MNIST_DIR}")
def test_real_mnist_t10k_split(datasets):
    spec = f"mnist:{MNIST_DIR}"
    a = datasets["mnist"](str(MNIST_DIR), 0)
    assert a.train_x.shape == (8000, 1, 28, 28) and a.test_x.shape == (2000, 1, 28, 28)
    assert "8,000 train / 2,000 test" in a.description and "seed 0" in a.description
    assert a.num_classes == 10 and float(a.train_x.min()) == 0.0 and float(a.train_x.max()) == 1.0
    b = datasets["mnist"](str(MNIST_DIR), 0)
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.test_x, b.test_x)
    c = datasets["mnist"](str(MNIST_DIR), 1)
    assert not torch.equal(a.test_y, c.test_y)
    bundle = load_data(spec, datasets, seed=0)
    assert (bundle.size("train"), bundle.size("val"), bundle.size("test")) == (7200, 800, 2000)
    assert bundle.input_shape == (1, 28, 28) and bundle.name == spec
    assert "seed 0" in bundle.description and "800" in bundle.description


# -- digits and synthetic -------------------------------------------------------------------------
def test_digits_shapes_and_split(datasets):
    raw = datasets["digits"](None, 0)
    assert raw.train_x.shape == (1438, 1, 8, 8) and raw.test_x.shape == (359, 1, 8, 8)
    assert raw.num_classes == 10 and float(raw.train_x.max()) == 1.0 and float(raw.train_x.min()) == 0.0
    assert set(raw.train_y.tolist()) == set(range(10))
    other = datasets["digits"](None, 1)
    assert not torch.equal(raw.test_y, other.test_y)
    bundle = load_data("digits", datasets, seed=0)
    assert bundle.size("train") + bundle.size("val") == 1438 and bundle.size("test") == 359
    assert bundle.augment is False and bundle.flip is False


def test_synthetic_is_deterministic_and_learnable(datasets):
    a = datasets["synthetic"](None, 0)
    b = datasets["synthetic"](None, 0)
    c = datasets["synthetic"](None, 1)
    assert a.train_x.shape == (512, 1, 8, 8) and a.test_x.shape == (128, 1, 8, 8) and a.num_classes == 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    # nearest class mean on train beats chance (10%) by far on test
    means = torch.stack([a.train_x[a.train_y == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(a.test_x.flatten(1), means).argmin(1)
    assert (pred == a.test_y).float().mean() > 0.5
    v = datasets["synthetic"]("100x6@3", 0)
    assert v.kind == "vector" and v.train_x.shape == (100, 6) and v.num_classes == 3
    with pytest.raises(UserError, match="NxCxHxW"):
        datasets["synthetic"]("axb", 0)


# -- bundle: splits, normalisation, batching, augmentation -----------------------------------------
def vector_raw(n=101, test=20):
    """Vectors whose first feature is the example's index: batches can be traced back to indices."""
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.rand(n)], 1)
    tx = torch.full((test, 2), 1000.0)
    return RawData(x, torch.arange(n) % 3, tx, torch.arange(test) % 3, 3, kind="vector", description="ramp")


def recover(bundle, xb):
    return (xb[:, 0] * bundle.std[0] + bundle.mean[0]).round().long().tolist()


def test_normalisation_from_train_split_only():
    raw = vector_raw()
    bundle = DataBundle("ramp", raw, seed=0, val_fraction=0.2)
    tr_x, _ = bundle.tensors("train")
    ids = recover(bundle, tr_x)
    expected_mean = raw.train_x[ids].mean(0)
    assert torch.allclose(bundle.mean, expected_mean, atol=1e-4)
    assert torch.allclose(tr_x.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(tr_x.std(0, unbiased=False), torch.ones(2), atol=1e-3)
    # the very different test set did not leak into the statistics
    assert bundle.mean[0] < 100 and float(bundle.tensors("test")[0][:, 0].min()) > 10
    # images: per-channel statistics of train only
    g = torch.Generator().manual_seed(0)
    img = RawData(torch.rand(40, 3, 4, 4, generator=g) * torch.tensor([1.0, 0.5, 0.1]).view(1, 3, 1, 1),
                  torch.zeros(40, dtype=torch.long), torch.ones(10, 3, 4, 4), torch.zeros(10, dtype=torch.long), 1)
    b = DataBundle("img", img, val_fraction=0.0)
    assert b.mean.shape == (3,) and torch.allclose(b.mean, img.train_x.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(b.std, img.train_x.std((0, 2, 3), unbiased=False), atol=1e-5)


def test_val_split_carved_from_train_with_seed():
    raw = vector_raw(n=200)
    a = DataBundle("ramp", raw, seed=0, val_fraction=0.1)
    b = DataBundle("ramp", raw, seed=0, val_fraction=0.1)
    c = DataBundle("ramp", raw, seed=5, val_fraction=0.1)
    va, tr = set(recover(a, a.tensors("val")[0])), set(recover(a, a.tensors("train")[0]))
    assert len(va) == 20 and len(tr) == 180 and not (va & tr) and va | tr == set(range(200))
    assert va == set(recover(b, b.tensors("val")[0]))
    assert va != set(recover(c, c.tensors("val")[0]))
    assert "seed 0" in a.description and "180" in a.description and "20" in a.description


def test_batches_cover_train_once_per_epoch_and_shuffle_repeatably():
    bundle = DataBundle("ramp", vector_raw(n=101), seed=0, val_fraction=0.1)
    n = bundle.size("train")
    train_ids = sorted(recover(bundle, bundle.tensors("train")[0]))
    epochs = []
    for epoch in range(2):
        batches = bundle.batches("train", 16, shuffle=True, epoch=epoch)
        seen = []
        count = 0
        for xb, yb in batches:
            assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and len(xb) <= 16
            seen += recover(bundle, xb)
            count += 1
        assert count == len(batches) == bundle.num_batches("train", 16)
        assert sorted(seen) == train_ids and len(seen) == n
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    again = [i for xb, _ in bundle.batches("train", 16, shuffle=True, epoch=0) for i in recover(bundle, xb)]
    assert again == epochs[0]  # repeatable
    plain = [i for xb, _ in bundle.batches("train", 16) for i in recover(bundle, xb)]
    assert plain == train_ids  # no shuffle: original order
    dropped = list(bundle.batches("train", 16, drop_last=True))
    assert all(len(xb) == 16 for xb, _ in dropped) and len(dropped) == n // 16


def test_distributed_ranks_are_disjoint_and_cover():
    bundle = DataBundle("ramp", vector_raw(n=100), seed=0, val_fraction=0.0)
    per_rank = []
    for rank in range(2):
        ids = [i for xb, _ in bundle.batches("train", 8, shuffle=True, epoch=3, rank=rank, world_size=2)
               for i in recover(bundle, xb)]
        per_rank.append(ids)
    assert len(per_rank[0]) == len(per_rank[1]) == 50
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(100))
    # same as torch's DistributedSampler
    sampler = torch.utils.data.DistributedSampler(range(100), num_replicas=2, rank=1, shuffle=True, seed=0)
    sampler.set_epoch(3)
    assert per_rank[1] == list(sampler)
    # an odd count: equal steps on every rank, padded with repeats, still covering all
    odd = DataBundle("ramp", vector_raw(n=101), seed=0, val_fraction=0.0)
    r0 = [i for xb, _ in odd.batches("train", 8, rank=0, world_size=2) for i in recover(odd, xb)]
    r1 = [i for xb, _ in odd.batches("train", 8, rank=1, world_size=2) for i in recover(odd, xb)]
    assert len(r0) == len(r1) == 51 and set(r0) | set(r1) == set(range(101))
    with pytest.raises(ValueError):
        odd.batches("train", 8, rank=2, world_size=2)


def test_augmentation_changes_images_keeps_shape_and_is_seeded(datasets):
    bundle = load_data("synthetic:64x3x16x16", datasets, seed=0, augment=True)
    assert bundle.augment and not bundle.flip
    plain = torch.cat([xb for xb, _ in bundle.batches("train", 32, augment=False)])
    aug = torch.cat([xb for xb, _ in bundle.batches("train", 32)])
    assert aug.shape == plain.shape
    assert not torch.equal(aug, plain)
    again = torch.cat([xb for xb, _ in bundle.batches("train", 32)])
    assert torch.equal(aug, again)
    other_epoch = torch.cat([xb for xb, _ in bundle.batches("train", 32, epoch=1)])
    assert not torch.equal(aug, other_epoch)
    # default: only the train split is augmented
    assert torch.equal(torch.cat([xb for xb, _ in bundle.batches("test", 32)]), bundle.tensors("test")[0])
    # off by default for synthetic data
    assert not load_data("synthetic", datasets).augment


def test_augment_images_crop_and_flip_semantics():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out = augment_images(x, g, pad=1, flip=False)
    assert out.shape == x.shape
    for i in range(2):  # each output is a shifted window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        assert any(torch.equal(out[i], padded[:, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))
    g = torch.Generator().manual_seed(1)
    flipped = augment_images(x.repeat(16, 1, 1, 1), g, pad=0, flip=True)
    n_flipped = sum(torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x.repeat(16, 1, 1, 1)))
    assert 0 < n_flipped < 32


def test_flip_defaults(tmp_path, datasets):
    write_cifar10_bin(tmp_path / "cifar-10-batches-bin")
    bundle = load_data(f"cifar10:{tmp_path}", datasets)
    assert bundle.augment and bundle.flip
    assert not load_data(f"cifar10:{tmp_path}", datasets, augment=False).augment


def test_vector_data_refuses_augmentation(datasets):
    with pytest.raises(UserError, match="augmentation"):
        load_data("synthetic:50x4", datasets, augment=True)


def test_subset_and_tensors(datasets):
    bundle = load_data("synthetic", datasets, seed=0)
    x, y = bundle.subset("train", 10)
    assert x.shape == (10, 1, 8, 8) and y.shape == (10,)
    x2, _ = bundle.subset("train", 10)
    assert torch.equal(x, x2)
    full, _ = bundle.tensors("test")
    assert full.shape[0] == bundle.size("test") == 128
    with pytest.raises(ValueError, match="split"):
        bundle.size("dev")


def test_unknown_dataset_lists_names(datasets):
    with pytest.raises(UserError) as err:
        load_data("imagenet:/x", datasets)
    msg = str(err.value)
    assert "imagenet" in msg and "\n" not in msg
    for name in ("cifar10", "cifar100", "digits", "folder", "mnist", "synthetic"):
        assert name in msg
    from slimkit.plugins import Registered

    entries = {n: Registered(n, f, "", "test") for n, f in datasets.items()}
    assert load_data("synthetic:40x1x4x4", entries).input_shape == (1, 4, 4)
    with pytest.raises(UserError, match="available datasets: cifar10, cifar100, digits"):
        load_data("nope", entries)
    assert parse_spec("folder:C:/data@32") == ("folder", "C:/data@32")
    assert parse_spec("digits") == ("digits", None)


def test_loader_contract_is_checked():
    good = dict(train_x=torch.rand(6, 1, 2, 2), train_y=torch.tensor([0, 1, 2, 0, 1, 2]),
                test_x=torch.rand(3, 1, 2, 2), test_y=torch.tensor([0, 1, 2]), num_classes=3)
    DataBundle("ok", RawData(**good), val_fraction=0.0)
    with pytest.raises(ValueError, match="labels span 0..2, expected 0..1"):
        DataBundle("bad", RawData(**{**good, "num_classes": 2}))
    with pytest.raises(ValueError, match="4 dimensions"):
        DataBundle("bad", RawData(**{**good, "train_x": torch.rand(6, 4)}))
    nan = good["train_x"].clone()
    nan[2, 0, 1, 1] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        DataBundle("bad", RawData(**{**good, "train_x": nan}))
    with pytest.raises(UserError, match="val_fraction"):
        DataBundle("bad", RawData(**good), val_fraction=1.0)


def test_split_indices_sizes():
    keep, held = split_indices(10000, 0.2, 0)
    assert len(keep) == 8000 and len(held) == 2000
    assert len(set(keep.tolist()) | set(held.tolist())) == 10000


# -- CIFAR ----------------------------------------------------------------------------------------
def cifar_records(n, n_classes, rng, coarse=False):
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, n_classes, size=n, dtype=np.uint8)
    return pixels, labels


def write_cifar10_bin(folder: Path, n=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        pixels, labels = cifar_records(n, 10, rng)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        out[name] = (pixels, labels)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return out


def as_images(pixels):
    return torch.from_numpy(pixels.reshape(-1, 3, 32, 32)).float().div(255)


def test_cifar10_binary(tmp_path, datasets):
    out = write_cifar10_bin(tmp_path / "cifar-10-batches-bin")
    raw = datasets["cifar10"](str(tmp_path), 0)  # the parent folder
    assert raw.train_x.shape == (15, 3, 32, 32) and raw.test_x.shape == (3, 3, 32, 32)
    expected = torch.cat([as_images(out[f"data_batch_{i}.bin"][0]) for i in range(1, 6)])
    assert torch.equal(raw.train_x, expected)
    assert raw.train_y.tolist() == np.concatenate([out[f"data_batch_{i}.bin"][1] for i in range(1, 6)]).tolist()
    assert torch.equal(raw.test_x, as_images(out["test_batch.bin"][0]))
    assert raw.classes == [f"class{i}" for i in range(10)] and raw.num_classes == 10
    # the batch folder itself works too
    raw2 = datasets["cifar10"](str(tmp_path / "cifar-10-batches-bin"), 0)
    assert torch.equal(raw2.test_x, raw.test_x)


def test_cifar_binary_errors(tmp_path, datasets):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(folder)
    (folder / "data_batch_3.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(UserError, match=r"data_batch_3\.bin.*3073-byte"):
        datasets["cifar10"](str(tmp_path), 0)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(UserError, match=r"lacks data_batch_3\.bin"):
        datasets["cifar10"](str(tmp_path), 0)
    with pytest.raises(UserError, match=r"data_batch_1.*test_batch"):
        datasets["cifar10"](str(tmp_path / "empty_does_not_exist"), 0)
    with pytest.raises(UserError, match=r"cifar10:DIR"):
        load_data("cifar10", datasets)


def test_cifar100_binary_uses_fine_labels(tmp_path, datasets):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    recs = {}
    for name, n in (("train.bin", 4), ("test.bin", 2)):
        pixels, fine = cifar_records(n, 100, rng)
        coarse = rng.integers(0, 20, size=n, dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], pixels], 1).tobytes())
        recs[name] = (pixels, fine)
    raw = datasets["cifar100"](str(tmp_path), 0)
    assert raw.num_classes == 100
    assert raw.train_y.tolist() == recs["train.bin"][1].tolist()
    assert torch.equal(raw.train_x, as_images(recs["train.bin"][0]))
    assert torch.equal(raw.test_x, as_images(recs["test.bin"][0]))


def test_cifar10_python_pickles(tmp_path, datasets):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    recs = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pixels, labels = cifar_records(2, 10, rng)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": pixels, b"labels": [int(v) for v in labels]}, f, protocol=2)
        recs[name] = (pixels, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"n{i}".encode() for i in range(10)]}, f, protocol=2)
    raw = datasets["cifar10"](str(folder), 0)
    assert torch.equal(raw.train_x, torch.cat([as_images(recs[f"data_batch_{i}"][0]) for i in range(1, 6)]))
    assert raw.test_y.tolist() == recs["test_batch"][1].tolist()
    assert raw.classes == [f"n{i}" for i in range(10)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar100_python_pickles_any_protocol(tmp_path, datasets, protocol):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    recs = {}
    for name, n in (("train", 5), ("test", 3)):
        pixels, fine = cifar_records(n, 100, rng)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": pixels, "fine_labels": fine.astype(np.int64).tolist(),
                         "coarse_labels": [0] * n}, f, protocol=protocol)
        recs[name] = (pixels, fine)
    raw = datasets["cifar100"](str(tmp_path), 0)
    assert torch.equal(raw.train_x, as_images(recs["train"][0]))
    assert raw.train_y.tolist() == recs["train"][1].tolist()
    assert raw.num_classes == 100 and raw.test_x.shape == (3, 3, 32, 32)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused(tmp_path, datasets):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(good, f, protocol=2)
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_2.*refused.*system"):
        datasets["cifar10"](str(tmp_path), 0)
    assert not marker.exists()
    # other dangerous globals, and non-latin1 codecs, are refused too
    p = tmp_path / "evil2"
    p.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UserError, match=r"refused.*builtins\.eval"):
        safe_load_pickle(p)
    p.write_bytes(b"c_codecs\nencode\n(X\x01\x00\x00\x00aX\x04\x00\x00\x00zlibtR.")
    with pytest.raises(UserError, match="evil2"):
        safe_load_pickle(p)
    assert issubclass(SafeUnpickler, pickle.Unpickler)


# -- folders of images ----------------------------------------------------------------------------
def write_png(path: Path, array: np.ndarray, mode: str):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_folder_train_test_layout(tmp_path, datasets):
    rng = np.random.default_rng(0)
    written = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("zebra", "ant"):
            for i in range(n):
                arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                write_png(tmp_path / split / cls / f"{i}.png", arr, "RGB")
                written[(split, cls, i)] = arr
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    raw = datasets["folder"](f"{tmp_path}@8", 0)
    assert raw.classes == ["ant", "zebra"] and raw.num_classes == 2
    assert raw.train_x.shape == (6, 3, 8, 8) and raw.test_x.shape == (4, 3, 8, 8)
    assert raw.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    first = torch.from_numpy(written[("train", "ant", 0)]).permute(2, 0, 1).float() / 255
    assert torch.equal(raw.train_x[0], first)  # same size: read back exactly
    resized = datasets["folder"](str(tmp_path), 0)  # default size 32
    assert resized.train_x.shape == (6, 3, 32, 32)
    bundle = load_data(f"folder:{tmp_path}@16", datasets, seed=0, val_fraction=0.0)
    assert bundle.input_shape == (3, 16, 16) and bundle.augment and bundle.flip


def test_folder_flat_layout_grey_and_split(tmp_path, datasets):
    rng = np.random.default_rng(1)
    for cls in ("b", "a", "c"):
        for i in range(5):
            write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, size=(10, 12), dtype=np.uint8), "L")
    raw = datasets["folder"](f"{tmp_path}@6", 4)
    assert raw.classes == ["a", "b", "c"]
    assert raw.train_x.shape == (12, 1, 6, 6) and raw.test_x.shape == (3, 1, 6, 6)
    assert "seed 4" in raw.description
    again = datasets["folder"](f"{tmp_path}@6", 4)
    assert torch.equal(raw.test_x, again.test_x)
    # one colour image turns the whole set RGB
    write_png(tmp_path / "a" / "colour.png", rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8), "RGB")
    assert datasets["folder"](f"{tmp_path}@6", 4).train_x.shape[1] == 3


def test_folder_errors(tmp_path, datasets):
    with pytest.raises(UserError, match="folder:DIR"):
        load_data("folder", datasets)
    with pytest.raises(UserError, match="not a directory"):
        datasets["folder"](str(tmp_path / "missing"), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        datasets["folder"](str(tmp_path / "empty"), 0)
    bad = tmp_path / "bad" / "cls" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    write_png(tmp_path / "bad" / "cls" / "ok.png", np.zeros((4, 4), np.uint8), "L")
    with pytest.raises(UserError, match="broken.png"):
        datasets["folder"](str(tmp_path / "bad"), 0)


def test_registered_through_the_plugin_hook():
    import pluggy

    from slimkit import hookspecs

    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    pm.register(builtin, name="slimkit.data.builtin")
    names = []
    pm.hook.register_datasets(register=lambda name, loader, summary="": names.append((name, summary)))
    assert {n for n, _ in names} == {"digits", "mnist", "cifar10", "cifar100", "folder", "synthetic"}
    assert all(s for _, s in names)
