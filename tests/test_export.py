"""`slimkit export`: decoded dense TorchScript / ONNX files, checked before they are kept, written atomically."""
import sys

import pytest
import torch
import torch.nn as nn

from conftest import cli
from slimkit import export as ex
from slimkit import storage
from slimkit.errors import UserError
from slimkit.nn import MaskedConv2d, to_masked
from slimkit.plugins import load_registry, set_registry
from slimkit_plugins import lowrank as lr

SHAPE = (3, 8, 8)
# torch >= 2.10 marks torch.jit deprecated; these tests load the TorchScript files on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")


@pytest.fixture
def registry():
    reg = load_registry()
    if "lowrank" not in reg.methods:  # not (yet) an installed entry point
        reg = load_registry(extra_plugins=[lr])
    set_registry(reg)
    yield reg
    set_registry(None)


def compressed_model(seed=0):
    """Masked (pruned) convs, a low-rank conv and a low-rank linear layer, with BatchNorm."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    model[5] = lr.decompose_conv(model[5], 6)
    model[9] = lr.decompose_linear(model[9], 4)
    to_masked(model)
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            m.set_mask(torch.rand_like(m.weight) > 0.5)
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def save(tmp_path, model, registry, name="m.slim"):
    path = tmp_path / name
    storage.save_model(path, model, registry, info={"input_shape": list(SHAPE), "num_classes": 4})
    return path


def eager(model, batch=5, seed=7):
    x = torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x)


def test_dense_model_decodes_masks_and_keeps_the_original():
    model = compressed_model()
    plain = ex.dense_model(model)
    assert not any(isinstance(m, MaskedConv2d) for m in plain.modules())
    assert not any("weight_mask" in k for k in plain.state_dict())
    assert any(isinstance(m, MaskedConv2d) for m in model.modules())  # the original is untouched
    x, y = eager(model)
    with torch.no_grad():
        assert torch.allclose(plain(x), y, atol=1e-6)
    assert not plain.training


def test_torchscript_export_loads_back_and_matches(tmp_path, registry):
    model = compressed_model()
    slim = save(tmp_path, model, registry)
    out = tmp_path / "model.pt"
    assert cli("export", slim, "--format", "torchscript", "--out", out) == 0
    assert out.is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    loaded = torch.jit.load(str(out))
    assert not any("weight_mask" in k for k in loaded.state_dict())
    for batch in (1, 4):  # traced at batch 2: the batch size is not baked in
        x, y = eager(model, batch)
        with torch.no_grad():
            assert torch.allclose(loaded(x), y, atol=1e-5, rtol=1e-5)
    result = ex.export_file(slim, "torchscript", tmp_path / "again.pt")
    assert result.verified_with == "torch.jit.load" and result.max_abs_diff <= 1e-5
    assert result.input_shape == list(SHAPE) and result.bytes == (tmp_path / "again.pt").stat().st_size


def test_onnx_export_runs_in_onnxruntime_and_matches(tmp_path, registry):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = compressed_model(1)
    slim = save(tmp_path, model, registry)
    out = tmp_path / "model.onnx"
    assert cli("export", slim, "--format", "onnx", "--out", out) == 0
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.slim", "model.onnx"]  # weights inside, no temp left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input"
    for batch in (1, 5):
        x, y = eager(model, batch)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        assert got.shape == y.shape
        assert torch.allclose(got, y, atol=1e-5, rtol=1e-5), (got - y).abs().max()


def test_missing_onnx_package_is_one_user_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(UserError, match=r"slimkit\[export\]"):
        ex.export_model(compressed_model(), SHAPE, "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_failed_check_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "m.pt"
    target.write_bytes(b"previous")
    monkeypatch.setattr(ex, "_close", lambda got, want: (False, 1.0))
    with pytest.raises(UserError, match="differs"):
        ex.export_model(compressed_model(), SHAPE, "torchscript", target)
    assert target.read_bytes() == b"previous"  # the old file is kept whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_user_errors(tmp_path, registry):
    slim = save(tmp_path, compressed_model(), registry)
    assert cli("export", slim, "--format", "tflite", "--out", tmp_path / "x") == 2
    assert cli("export", slim, "--format", "torchscript", "--out", tmp_path) == 2
    assert cli("export", tmp_path / "missing.slim", "--format", "torchscript", "--out", tmp_path / "x.pt") == 2
    assert cli("export", slim, "--format", "torchscript", "--out", slim) == 2

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(UserError, match="one tensor"):
        ex.export_model(Pair(), SHAPE, "torchscript", tmp_path / "p.pt")
    assert not (tmp_path / "p.pt").exists()


def test_sparse_inference_layers_are_exported_dense(tmp_path):
    from slimkit.nn import CSRLayer, to_sparse_inference

    model = compressed_model(2)
    x, y = eager(model)
    to_sparse_inference(model, min_sparsity=0.0)
    kinds = {type(m).__name__ for m in model.modules() if isinstance(m, CSRLayer)}
    assert kinds == {"SparseConv2d", "SparseLinear"}
    plain = ex.dense_model(model)
    assert not any(isinstance(m, CSRLayer) for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(x), y, atol=1e-5)
    ex.export_model(model, SHAPE, "torchscript", tmp_path / "s.pt")
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "s.pt"))(x), y, atol=1e-5)
