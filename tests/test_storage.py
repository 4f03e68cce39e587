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


# --------------------------------------------------------------------------- quantised layers (engine types)

QUANTIZED_TYPES = ("QuantizedConv2d", "Int8Conv2d", "QuantizedLinear", "Int8Linear")


def quantized_model():
    """One layer of each type of slimkit.nn.quantized, its weights on its codebook / int8 grid."""
    from slimkit.nn import Int8Conv2d, Int8Linear, QuantizedConv2d, QuantizedLinear

    torch.manual_seed(0)
    model = nn.Sequential(QuantizedConv2d(1, 4, 3, padding=1, num_codes=16), Int8Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), QuantizedLinear(4 * 64, 8, num_codes=8, index_bits=4, pos_bits=2),
                          nn.ReLU(), Int8Linear(8, 10))
    for layer in (model[0], model[4]):
        k = layer.weight_codebook.numel()
        layer.set_codes(torch.linspace(-1, 1, k), torch.randint(0, k, layer.weight.shape),
                        torch.rand(layer.weight.shape) > 0.3)
    for layer in (model[1], model[6]):
        w = layer.weight.detach()
        scale = w.abs().reshape(w.shape[0], -1).amax(1) / 127
        q = torch.round(w / scale.reshape(-1, *[1] * (w.dim() - 1))).to(torch.int8)
        with torch.no_grad():
            layer.weight_scale.copy_(scale)
            layer.weight.copy_(storage.int8_dequantize(q, scale))
    return model


def engine_only_registry():
    """A registry of the engine's built-ins alone: no entry point, so no plugin at all."""
    import importlib

    import pluggy

    from slimkit import hookspecs
    from slimkit.plugins import BUILTIN_PLUGINS, Registry

    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    registry = Registry(pm, [])
    assert not registry.methods
    return registry


def _assert_same_model(model, loaded):
    assert [type(m) for m in loaded] == [type(m) for m in model]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(2, 1, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_quantized_layers_save_and_load_without_any_plugin(tmp_path):
    """The quantised layer types are the engine's: a file holding them is written and read
    with no plugin installed, and names them by their module in slimkit.nn."""
    registry = engine_only_registry()
    model = quantized_model()
    storage.save_model(tmp_path / "q.slim", model, registry, info=INFO)
    header = storage.read_header(tmp_path / "q.slim")
    types = [c["type"] for c in header["architecture"]["children"].values()]
    assert [t for t in types if "." in t] == [f"slimkit.nn.quantized.{n}" for n in QUANTIZED_TYPES]
    assert {header["tensors"][f"{i}.weight"]["codec"] for i in (0, 4)} == {"csr"}
    assert {header["tensors"][f"{i}.weight"]["codec"] for i in (1, 6)} == {"int8"}
    _assert_same_model(model, storage.load_model(tmp_path / "q.slim", registry).model)


@pytest.mark.parametrize("registry", ["installed", "engine_only"])
def test_files_written_before_the_layers_moved_to_the_engine_still_load(tmp_path, registry):
    """Until the quantised layers moved to slimkit.nn.quantized they lived in the quantize
    plugin, and files name them ``slimkit_plugins.quantize.<Class>``. Such a file differs
    from a current one only in those names (checked byte for byte against the old writer
    when the layers moved), so renaming them in a current file makes a pre-move file."""
    registry = get_registry() if registry == "installed" else engine_only_registry()
    model = quantized_model()
    path = tmp_path / "old.slim"
    storage.save_model(path, model, registry, info=INFO)

    def old_names(header, meta):
        for child in header["architecture"]["children"].values():
            child["type"] = child["type"].replace("slimkit.nn.quantized.", "slimkit_plugins.quantize.")

    _rewrite_header(path, old_names)
    types = [c["type"] for c in storage.read_header(path)["architecture"]["children"].values()]
    assert [t for t in types if "." in t] == [f"slimkit_plugins.quantize.{n}" for n in QUANTIZED_TYPES]
    loaded = storage.load_model(path, registry).model
    _assert_same_model(model, loaded)
    # saved again, the file uses the current names
    storage.save_model(tmp_path / "new.slim", loaded, registry, info=INFO)
    types = [c["type"] for c in storage.read_header(tmp_path / "new.slim")["architecture"]["children"].values()]
    assert [t for t in types if "." in t] == [f"slimkit.nn.quantized.{n}" for n in QUANTIZED_TYPES]


def test_type_aliases_are_read_only_names_of_one_class():
    from slimkit.nn import ModuleRegistry, QuantizedLinear, serializable

    registry = ModuleRegistry()
    registry.register(QuantizedLinear)
    registry.register(QuantizedLinear)  # registering the same class again is harmless
    assert "slimkit.nn.quantized.QuantizedLinear" in registry.names()
    assert "slimkit_plugins.quantize.QuantizedLinear" not in registry.names()  # never written
    assert registry.resolve("slimkit_plugins.quantize.QuantizedLinear") == "slimkit.nn.quantized.QuantizedLinear"
    built = registry.build({"type": "slimkit_plugins.quantize.QuantizedLinear", "args": {"in_features": 3,
                                                                                         "out_features": 2}})
    assert type(built) is QuantizedLinear

    @serializable
    class MyQuantizedLinear(QuantizedLinear):  # a subclass does not inherit its parent's former names
        pass

    registry.register(MyQuantizedLinear)
    assert registry.resolve("slimkit_plugins.quantize.QuantizedLinear") == "slimkit.nn.quantized.QuantizedLinear"

    @serializable
    class Thief(nn.Module):  # an alias may not name a second class
        slimkit_type_aliases = ("slimkit_plugins.quantize.QuantizedLinear",)

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Thief)
