"""The .slim format: exact round trips, sparse storage that really is smaller, and
refusal of damaged files with a clear error."""
import json
import struct

import pytest
import torch
import torch.nn as nn

from slimkit import storage
from slimkit.errors import UserError
from slimkit.nn import to_masked
from slimkit.plugins import get_registry

INFO = {"model": "test", "input_shape": [1, 8, 8], "num_classes": 10, "data": {}}


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


def pruned_model(sparsity=0.9):
    model = to_masked(small_model())
    for m in (model[0], model[4]):
        w = m.weight.detach().abs().flatten()
        k = int(sparsity * w.numel())
        mask = torch.ones_like(w)
        mask[w.argsort()[:k]] = 0
        m.set_mask(mask.view_as(m.weight))
    return model


def test_dense_round_trip_is_exact(tmp_path):
    model = small_model()
    model[1].running_mean.uniform_()
    size = storage.save_model(tmp_path / "m.slim", model, get_registry(), info=INFO)
    loaded = storage.load_model(tmp_path / "m.slim", get_registry())
    assert size == (tmp_path / "m.slim").stat().st_size == loaded.size_bytes
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_masked_round_trip_is_exact_and_smaller(tmp_path):
    model = pruned_model(0.9)
    dense_size = storage.save_model(tmp_path / "d.slim", small_model(), get_registry(), info=INFO)
    size = storage.save_model(tmp_path / "p.slim", model, get_registry(), info=INFO)
    loaded = storage.load_model(tmp_path / "p.slim", get_registry()).model
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert int((loaded[4].weight == 0).sum()) == int(0.9 * loaded[4].weight.numel())
    # values (10 % of 32 bits) + a 1-bit mask per weight: well under a third of dense
    assert size < dense_size / 3
    x = torch.randn(4, 1, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_no_temporary_left_behind(tmp_path):
    storage.save_model(tmp_path / "m.slim", small_model(), get_registry(), info=INFO)
    assert [p.name for p in tmp_path.iterdir()] == ["m.slim"]


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8:8 + n])
    header = json.loads(meta["__metadata__"]["slimkit"])
    edit(header, meta)
    meta["__metadata__"]["slimkit"] = json.dumps(header)
    blob = json.dumps(meta).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_slimkit", "unknown_type", "huge_shape",
                                    "unknown_codec", "value_count", "future_version"])
def test_damaged_files_are_refused_cleanly(tmp_path, damage):
    path = tmp_path / "m.slim"
    storage.save_model(path, pruned_model(), get_registry(), info=INFO)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 64)
    elif damage == "not_slimkit":
        from safetensors.torch import save_file
        save_file({"a": torch.zeros(3)}, str(path))
    elif damage == "unknown_type":
        _rewrite_header(path, lambda h, m: h["architecture"].update(type="os.system"))
    elif damage == "huge_shape":
        _rewrite_header(path, lambda h, m: h["tensors"]["0.weight"].update(shape=[2**40, 2**20]))
    elif damage == "unknown_codec":
        _rewrite_header(path, lambda h, m: h["tensors"]["0.weight"].update(codec="zip"))
    elif damage == "value_count":
        _rewrite_header(path, lambda h, m: h["tensors"]["0.weight"].update(shape=[8, 1, 3, 2]))
    elif damage == "future_version":
        _rewrite_header(path, lambda h, m: h.update(version=99))
    with pytest.raises(UserError) as info:
        storage.load_model(path, get_registry())
    assert str(path) in str(info.value)
