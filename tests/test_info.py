"""`slimkit info`: per-layer figures of CSR (--sparse-inference) layers, the kernel each
sparse-capable layer runs per batch size (checked against the ops actually called), the
codec that stored each weight, and latency notes that state the arguments used."""
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import run_slimkit
from slimkit import storage
from slimkit.kernel_plan import kernel_plan
from slimkit.models.lenet import LeNet300
from slimkit.nn import prunable_layers, to_masked
from slimkit.ops import backend
from slimkit.ops.linear import SPARSE_LINEAR_MIN_MACS
from slimkit.nn import to_sparse_inference
from slimkit.plugins import get_registry
from slimkit.summary import describe_model

MNIST_SHAPE = (1, 28, 28)
INFO = {"model": "lenet300", "input_shape": list(MNIST_SHAPE), "num_classes": 10, "data": {}}
FC = {"classifier.fc1": (300, 784), "classifier.fc2": (100, 300), "classifier.fc3": (10, 100)}


def pruned_lenet300(sparsity=0.9, seed=0):
    """LeNet-300-100 for MNIST-sized input, each layer's smallest weights pruned exactly."""
    torch.manual_seed(seed)
    model = to_masked(LeNet300(list(MNIST_SHAPE), 10))
    for _, layer in prunable_layers(model):
        w = layer.weight.detach().abs().flatten()
        keep = torch.zeros_like(w)
        keep[w.argsort(descending=True)[: round((1 - sparsity) * w.numel())]] = 1
        layer.set_mask(keep.view_as(layer.weight))
        with torch.no_grad():
            layer.bias.fill_(0.1)  # the zoo starts biases at zero; non-zero ones are counted too
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("info")
    registry = get_registry()
    masked = pruned_lenet300()
    storage.save_model(tmp / "masked.slim", masked, registry, info=INFO)
    to_sparse_inference(masked)
    storage.save_model(tmp / "csr.slim", masked, registry, info=INFO)
    return tmp


def expected_kernel(name, batch, native):
    out, fan_in = FC[name]
    return "sparse" if native and batch * fan_in * out >= SPARSE_LINEAR_MIN_MACS else "dense"


def test_sparse_inference_rows_show_shape_params_nonzeros_and_kernel_per_batch(files):
    desc = describe_model(files / "csr.slim")
    rows = {r["layer"]: r for r in desc["layers"]}
    model = storage.load_model(files / "csr.slim", get_registry()).model
    native = backend.native_available()
    for name, (out, fan_in) in FC.items():
        r = rows[name]
        layer = model.get_submodule(name)
        assert r["type"] == "SparseLinear" and r["shape"] == [out, fan_in]
        assert r["params"] == out * fan_in + out
        assert r["nonzero"] == int(torch.count_nonzero(layer.values)) + int(torch.count_nonzero(layer.bias))
        assert r["nonzero"] == round(0.1 * out * fan_in) + out  # 90 % pruned, biases non-zero
        assert r["codec"].startswith("CSR buffers")
        for batch in (1, 64):
            assert r["kernels"][f"batch {batch}"]["kernel"] == expected_kernel(name, batch, native)
    assert sum(r["params"] for r in rows.values()) == desc["params"]
    assert sum(r["nonzero"] for r in rows.values()) == desc["nonzero_params"]
    if native:  # fc1 at batch 1 has 235,200 MACs (sparse), fc2 30,000 (under the floor)
        assert "30,000 MACs per call < 200,000" in rows["classifier.fc2"]["kernels"]["batch 1"]["reason"]


def test_reference_backend_runs_every_layer_dense(files):
    proc = run_slimkit("info", files / "csr.slim", "--json", env={"SLIMKIT_KERNELS": "reference"})
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in json.loads(proc.stdout)["layers"] if "kernels" in r]
    assert len(rows) == 3
    choices = [c for r in rows for c in r["kernels"].values()]
    assert all(c["kernel"] == "dense" for c in choices)
    assert any("no native kernel: reference" in c["reason"] for c in choices)
    table = run_slimkit("info", files / "csr.slim", env={"SLIMKIT_KERNELS": "reference"}).stdout
    assert "(sparse kernel)" not in table and "no native kernel" in table


class SparseCalls(TorchDispatchMode):
    """Counts calls of the native sparse_linear op."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "sparse_linear" in str(func):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not backend.native_available(), reason="needs the native kernels")
def test_the_plan_is_what_runs(files):
    """The kernel info reports for a layer is the op that layer calls at that batch size."""
    model = storage.load_model(files / "csr.slim", get_registry()).model.eval()
    plan = kernel_plan(model, MNIST_SHAPE, (1, 8, 64))
    for name in FC:
        layer = model.get_submodule(name)
        for batch in (1, 8, 64):
            x = torch.randn(batch, layer.in_features)
            with torch.no_grad(), SparseCalls() as calls:
                layer(x)
            assert (calls.calls > 0) == (plan[name][f"batch {batch}"]["kernel"] == "sparse"), (name, batch)


def test_stored_as_names_the_weights_codec(files, tmp_path):
    desc = describe_model(files / "masked.slim")
    header = storage.read_header(files / "masked.slim")
    for r in (r for r in desc["layers"] if r["layer"] in FC):
        assert r["codec"] == header["tensors"][r["layer"] + ".weight"]["codec"] == "masked"
        assert r["kernels"]["batch 1"]["kernel"] == "dense" and "converted" in r["kernels"]["batch 1"]
    # a weight the model asks to store as CSR is shown as csr, with its settings
    model = pruned_lenet300()
    model.classifier.fc1.slimkit_storage = {"codec": "csr", "pos_bits": 4}
    storage.save_model(tmp_path / "csr-codec.slim", model, get_registry(), info=INFO)
    rows = {r["layer"]: r for r in describe_model(tmp_path / "csr-codec.slim")["layers"]}
    assert rows["classifier.fc1"]["codec"].startswith("csr (") and "pos_bits=4" in rows["classifier.fc1"]["codec"]
    assert rows["classifier.fc2"]["codec"] == "masked"


def test_latency_times_the_dense_twin_and_states_its_arguments(files):
    proc = run_slimkit("info", files / "masked.slim", "--json", "--latency", "--runs", "3", "--warmup", "2",
                       "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    desc = json.loads(proc.stdout)
    assert desc["latency"]["repeats"] == 3 and desc["latency"]["warmup"] == 2 and desc["latency"]["batch_size"] == 8
    assert set(desc["latency"]["ms"]) == {"model", "dense", "sparse_inference", "runtime_model"}
    assert desc["runtime_latency_ms"] == desc["latency"]["ms"]["runtime_model"] > 0  # slimkit's runtime, same run
    assert "median of 3 forward passes at batch 8 after 2 warm-up" in desc["latency_note"]
    assert desc["batch_sizes"] == [1, 8, 64]
    assert all(set(r["kernels"]) == {"batch 1", "batch 8", "batch 64"} for r in desc["layers"] if r["layer"] in FC)
    table = run_slimkit("info", files / "csr.slim", "--latency", "--runs", "4", "--warmup", "0").stdout
    assert "median of 4 forward passes at batch 1 after 0 warm-up" in table and "dense twin" in table
    assert "slimkit runtime (slimkit.load, slimkit run):" in table


def test_dense_fp32_reference_is_the_same_bytes_for_masked_and_csr(files):
    """The reference size is the model written dense fp32, however the file stores it."""
    a, b = describe_model(files / "masked.slim"), describe_model(files / "csr.slim")
    assert a["dense_fp32_bytes"] == b["dense_fp32_bytes"]
