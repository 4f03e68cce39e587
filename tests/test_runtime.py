"""slimkit.runtime: BatchNorm folding is exact, CSR layers are lowered to slimkit's kernels,
and every zoo model (dense, pruned -> sparse inference, low-rank, quantized) gives the eager
model's outputs through the runtime, within float32 tolerance."""
import sys

import pytest
import torch
import torch.nn as nn

from slimkit.models import lenet, mobilenet, resnet, vgg
from slimkit.nn import MaskedMixin, quantizable_layers, quantized_twin, replace_layer, to_masked
from slimkit.ops import backend as ops_backend
from slimkit.nn.sparse import SparseConv2d, SparseLinear, to_sparse_inference
from slimkit.runtime import RuntimeModel, compile_model
from slimkit.runtime.fold import fold_conv_bn, fold_csr_bn, fold_linear_bn
from slimkit.runtime.select import RTOL, outputs_match

native = pytest.mark.skipif(not ops_backend.native_available(), reason="native kernels unavailable")

MNIST, CIFAR = [1, 28, 28], [3, 32, 32]
ZOO = {
    "lenet300": (lambda: lenet.lenet300(MNIST, 10, width=0.25), MNIST),
    "lenet5": (lambda: lenet.lenet5(MNIST, 10), MNIST),
    "vgg11": (lambda: vgg.vgg11(MNIST, 10, width=0.125), MNIST),
    "minivgg": (lambda: vgg.minivgg(CIFAR, 10, width=0.125), CIFAR),
    "resnet20": (lambda: resnet.resnet20(CIFAR, 10, width=0.25), CIFAR),
    "mobilenetv2": (lambda: mobilenet.mobilenetv2(CIFAR, 10, width=0.25), CIFAR),
}
SLOW = {"mobilenetv2", "minivgg"}


def _randomize_bn(model):
    """Non-trivial BatchNorm statistics (a fresh BN is the identity, which folding would pass trivially)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


def _prune(model, sparsity=0.9):
    """Random unstructured masks (90 %), then the CSR inference layers."""
    to_masked(model)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, MaskedMixin):
            m.set_mask((torch.rand(m.weight.shape, generator=g) >= sparsity).float())
    to_sparse_inference(model)
    return model


def _lowrank(model):
    from slimkit_plugins.lowrank import decompose_conv, decompose_linear

    for name, m in list(model.named_modules()):
        if type(m) is nn.Conv2d and m.groups == 1 and m.kernel_size == (3, 3) and m.in_channels > 3:
            replace_layer(model, name, decompose_conv(m, max(1, m.out_channels // 2)))
        elif type(m) is nn.Linear and min(m.weight.shape) > 4:
            replace_layer(model, name, decompose_linear(m, min(m.weight.shape) // 2))
    return model.eval()


def _int8(model):
    from slimkit import storage
    from slimkit_plugins.quantize import int8_quantize

    to_masked(model)
    for name, m in quantizable_layers(model):
        twin = quantized_twin(m, "int8")
        q, scale = int8_quantize(twin.weight, twin.weight_mask)
        with torch.no_grad():
            twin.weight_scale.copy_(scale)
            twin.weight.copy_(storage.int8_dequantize(q, scale))
        replace_layer(model, name, twin)
    return model.eval()


VARIANTS = {"dense": lambda m: m, "pruned": _prune, "lowrank": _lowrank, "int8": _int8}


def _check(model, shape, backend, batch=2):
    rm = compile_model(model, shape, backend=backend)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    got = rm(x)
    ok, err = outputs_match(got, want)
    assert ok, f"max relative error {err:.3g} > {RTOL}"
    return rm


# --------------------------------------------------------------------------- folding

def test_fold_conv_bn_is_exact_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1).double()
    bn = _randomize_bn(nn.BatchNorm2d(8)).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        want, got = bn(conv(x)), fold_conv_bn(conv, bn)(x)
    assert (got - want).abs().max() < 1e-12


def test_fold_linear_bn_is_exact_in_float64_without_bias():
    torch.manual_seed(0)
    linear = nn.Linear(12, 6, bias=False).double()
    bn = _randomize_bn(nn.BatchNorm1d(6)).double()
    x = torch.randn(5, 12, dtype=torch.float64)
    with torch.no_grad():
        want, got = bn(linear(x)), fold_linear_bn(linear, bn)(x)
    assert (got - want).abs().max() < 1e-12


def test_fold_csr_bn_keeps_the_sparsity_pattern_and_is_exact_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_((torch.rand(conv.weight.shape) > 0.9).double())
    sparse = SparseConv2d.from_conv(conv)
    bn = _randomize_bn(nn.BatchNorm2d(16)).double()
    folded = fold_csr_bn(sparse, bn)
    assert torch.equal(folded.row_ptr, sparse.row_ptr) and torch.equal(folded.col_idx, sparse.col_idx)
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        want, got = bn(sparse(x)), folded(x)
    assert (got - want).abs().max() < 1e-12


def test_runtime_folds_every_batchnorm_of_vgg():
    model = _randomize_bn(vgg.vgg11(MNIST, 10, width=0.125))
    rm = RuntimeModel(model, MNIST, backend="eager")
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bns == 8 and rm.folded_batchnorms == bns
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in rm.graph.modules())


def test_model_is_not_changed_by_the_runtime():
    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _check(model, MNIST, "eager")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- lowering

@native
def test_pruned_layers_run_slimkits_kernels_inside_the_graph():
    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125)))
    rm = _check(model, MNIST, "eager")
    layers = rm.report()["shapes"][0]["layers"]
    sparse = [entry for entry in layers if entry["path"] == "sparse kernel"]
    assert len(layers) == 8 + 1 and len(sparse) >= 5  # 8 convs + classifier; 1x1 planes may run dense
    calls = [n.target for n in rm._built[next(iter(rm._built))][0].graph.nodes if n.op == "call_function"]
    fused = calls.count(torch.ops.slimkit.sparse_conv2d_relu_pool.default)  # conv -> ReLU -> pool in one call
    assert calls.count(torch.ops.slimkit.sparse_conv2d.default) + fused == sum(e["kind"] == "conv" for e in sparse)
    assert fused == 4
    assert torch.relu_ in calls  # the ReLU after a kernel that no pool follows runs in place on its output


@native
def test_sparse_linear_is_lowered_per_batch_size():
    """A lone layer's kernel pays from SPARSE_LINEAR_MIN_MACS: 784->12 is dense at batch 1
    (9.4 K MACs), sparse at 64 (602 K)."""
    model = _prune(nn.Sequential(nn.Flatten(), nn.Linear(784, 12)).eval())
    rm = RuntimeModel(model, MNIST, backend="eager")
    paths = {b: [e["path"] for e in rm.prepare(b)["layers"]] for b in (1, 64)}
    assert paths == {1: ["dense"], 64: ["sparse kernel"]}
    for b in (1, 64):
        x = torch.randn(b, *MNIST)
        assert outputs_match(rm(x), model(x))[0]


@native
@pytest.mark.parametrize("backend", ["eager", "jit", "freeze"])
def test_fully_connected_runs_become_one_sparse_mlp_call(backend):
    """Linear [+ ReLU] runs (Dropout between them too) fuse into one sparse_mlp call at every batch
    size: CSR layers past their crossover, dense (addmm) ones below it, plain nn.Linear too."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Dropout(0.5), nn.Linear(300, 100),
                          nn.ReLU(), nn.Linear(100, 10))
    _prune(model)
    replace_layer(model, "4", model[4].to_dense_module())  # a plain dense layer inside the run
    model.eval()
    rm = RuntimeModel(model, MNIST, backend=backend)
    for b in (1, 64):
        info = rm.prepare(b)
        assert [e["path"] for e in info["layers"]] == ["sparse kernel", "sparse kernel"]
        assert all("fused into sparse_mlp" in e["why"] for e in info["layers"])
        x = torch.randn(b, *MNIST, generator=torch.Generator().manual_seed(b))
        assert outputs_match(rm(x), model(x))[0]
    if backend == "eager":
        graph = rm._built[next(iter(rm._built))][0].graph
        calls = [n.target for n in graph.nodes if n.op == "call_function"]
        assert calls.count(torch.ops.slimkit.sparse_mlp.default) == 1
        assert torch.ops.slimkit.sparse_linear.default not in calls


def test_reference_kernels_lower_to_dense(monkeypatch):
    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125)))
    monkeypatch.setattr(RuntimeModel, "native", property(lambda self: False))
    rm = _check(model, MNIST, "eager")
    assert all(e["path"] == "dense" for e in rm.report()["shapes"][0]["layers"])


def test_input_shape_is_checked():
    rm = RuntimeModel(lenet.lenet300(MNIST, 10, width=0.25).eval(), MNIST, backend="eager")
    with pytest.raises(ValueError, match="takes"):
        rm(torch.randn(2, 1, 28, 27))


# --------------------------------------------------------------------------- every zoo model

CASES = [pytest.param(name, variant, marks=[pytest.mark.slow] if name in SLOW else [])
         for name in ZOO for variant in VARIANTS]


@pytest.mark.parametrize("name,variant", CASES)
def test_zoo_model_through_runtime_equals_eager(name, variant):
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    model = VARIANTS[variant](_randomize_bn(factory()))
    _check(model, shape, "jit")


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_onnxruntime_backend_runs_dense_and_filter_pruned_models(name):
    pytest.importorskip("onnxruntime")
    from slimkit.models import zoo
    from slimkit_plugins import filter_prune as fp

    if name == "vit":
        factory, shape = (lambda: zoo.MODELS["vit"][0](MNIST, 10, dim=32, depth=1, heads=2, seed=0)), MNIST
    else:
        factory, shape = ZOO[name]
    model = _randomize_bn(factory()).eval()
    pruned = fp.prune_channels(model, shape, ratio=0.5, round_to=8).eval()
    for m in (model, pruned):
        rm = _check(m, shape, "onnxruntime")
        assert rm.report()["shapes"][0]["backend"] == "onnxruntime"


def test_onnxruntime_backend_refuses_a_graph_with_slimkit_kernels():
    pytest.importorskip("onnxruntime")
    from slimkit.runtime.select import choose

    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125))).eval()
    rm = RuntimeModel(model, MNIST, candidates=("onnxruntime", "eager"), remeasure=True)
    info = rm.prepare(1)
    if any(e["path"] == "sparse kernel" for e in info["layers"]):
        assert info["backend"] == "eager"
        assert "slimkit's sparse kernels" in info["choice"]["rejected"]["onnxruntime"]
    assert choose is not None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg11", "resnet20", "lenet300"])
def test_compile_backend_equals_eager(name):
    factory, shape = ZOO[name]
    model = _prune(_randomize_bn(factory()))
    _check(model, shape, "compile")


@pytest.mark.slow
def test_auto_measures_the_candidates_and_records_the_choice(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("SLIMKIT_CACHE", str(tmp_path))
    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125)))
    rm = RuntimeModel(model, MNIST, candidates=("jit", "eager"))
    info = rm.prepare(2)
    assert set(info["choice"]["median_ms"]) == {"jit", "eager"}
    assert info["backend"] == min(info["choice"]["median_ms"], key=info["choice"]["median_ms"].get)
    recorded = json.loads((tmp_path / "runtime" / "choices.json").read_text())
    assert [v["backend"] for v in recorded.values()] == [info["backend"]]
    again = RuntimeModel(model, MNIST, candidates=("jit", "eager")).prepare(2)
    assert again["choice"]["cached"] and again["backend"] == info["backend"]


def test_load_runs_a_slim_file(tmp_path):
    import slimkit
    from slimkit import storage
    from slimkit.plugins import get_registry

    model = _prune(_randomize_bn(lenet.lenet5(MNIST, 10)))
    path = tmp_path / "m.slim"
    storage.save_model(path, model, get_registry(), info={"input_shape": MNIST, "num_classes": 10})
    rm = slimkit.load(path, backend="eager")
    x = torch.randn(2, *MNIST)
    assert outputs_match(rm(x), model(x))[0]
    assert any(isinstance(m, (SparseConv2d, SparseLinear)) for m in rm._eager.modules())


# --------------------------------------------------------------------------- slimkit run

@pytest.fixture
def slim_file(tmp_path):
    from slimkit import storage
    from slimkit.plugins import get_registry

    model = _prune(_randomize_bn(lenet.lenet5(MNIST, 10)))
    path = tmp_path / "m.slim"
    storage.save_model(path, model, get_registry(), info={"input_shape": MNIST, "num_classes": 10})
    return path, model


def test_run_predicts_and_saves_the_models_outputs(slim_file, tmp_path, capsys):
    import numpy as np
    from conftest import cli

    path, model = slim_file
    x = np.random.default_rng(0).standard_normal((5, *MNIST)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli("run", path, "--input", tmp_path / "x.npy", "--out", tmp_path / "y.npy", "--batch", 2,
               "--backend", "eager") == 0
    y = np.load(tmp_path / "y.npy")
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    assert y.shape == (5, 10) and outputs_match(torch.from_numpy(y), want)[0]
    printed = capsys.readouterr().out
    assert all(f"row {i}: class {c}" in printed for i, c in enumerate(want.argmax(1).tolist()))


def test_run_benchmark_reports_both_timings(slim_file, capsys):
    import json
    from conftest import cli

    path, _ = slim_file
    assert cli("run", path, "--runs", 3, "--warmup", 1, "--backend", "jit", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"]["backend"] == "jit" and result["folded_batchnorms"] == 0
    assert {"runtime", "eager"} <= set(result["timing"]) and result["timing"]["runtime"]["median_ms"] > 0


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "--batch 0 is invalid"),
    (["--backend", "tvm"], "--backend 'tvm' is invalid"),
    (["--out", "y.npy"], "--out saves predictions"),
    (["--input", "missing.npy"], "does not exist"),
])
def test_run_bad_options_are_one_line(slim_file, capsys, args, message):
    from conftest import cli

    path, _ = slim_file
    assert cli("run", path, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_run_input_of_the_wrong_shape_is_one_line(slim_file, tmp_path, capsys):
    import numpy as np
    from conftest import cli

    path, _ = slim_file
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 28, 28), np.float32))
    assert cli("run", path, "--input", tmp_path / "x.npy", "--backend", "eager") == 2
    assert "has shape [2, 3, 28, 28]" in capsys.readouterr().err


# --------------------------------------------------------------------------- which engine is faster

def test_engine_advice_names_the_engine_that_uses_the_sparsity():
    from slimkit.runtime.engines import engine_advice

    sparse = {"sparsity": 0.9, "layers": [{"runs_sparse": True}, {"runs_sparse": False}, {}]}
    text = engine_advice(sparse)
    assert "faster only in slimkit's runtime" in text and "ONNX Runtime" in text and "runs this model dense" in text
    assert "1 of 2" in text
    assert "stored masked" in engine_advice({"sparsity": 0.9, "layers": [{}]})
    assert "below the sparsity" in engine_advice({"sparsity": 0.5, "layers": [{"runs_sparse": False}]})
    assert engine_advice({"sparsity": 0.0, "layers": []}).startswith("dense weights")


def test_info_says_which_engine(slim_file):
    from slimkit.summary import describe_model

    path, _ = slim_file
    assert "faster only in slimkit's runtime" in describe_model(path)["engines"]


@pytest.mark.slow
def test_bench_models_checks_and_times_every_column(slim_file):
    pytest.importorskip("onnxruntime")
    from slimkit.bench.models import COLUMNS, models_command

    from slimkit import storage
    from slimkit.plugins import get_registry

    path, _ = slim_file
    other = path.with_name("baseline.slim")  # other weights: each ONNX session must be checked against its own model
    torch.manual_seed(1)
    storage.save_model(other, lenet.lenet5(MNIST, 10), get_registry(), info={"input_shape": MNIST, "num_classes": 10})
    result = models_command([("lenet5", str(path))], threads=(1,), batches=(2,), rounds=2, candidates=("eager",),
                            baselines={"lenet5": str(other)})
    (row,) = result["rows"]
    assert row["model"] == "lenet5" and row["batch"] == 2 and abs(row["sparsity"] - 0.9) < 0.02
    import importlib.util

    for name in COLUMNS:
        col = row["columns"][name]
        if name == "deepsparse" and importlib.util.find_spec("deepsparse") is None:  # optional, its own venv
            assert col["median_ms"] is None and "deepsparse not installed" in col["note"]
            continue
        assert col["median_ms"] > 0 and col["max_rel_error"] <= 1e-4, (name, col)
    cols = {k: c["median_ms"] for k, c in row["columns"].items()}
    assert row["runtime_vs_ort"] == cols["ort dense"] / cols["runtime"]
    assert row["ort_vs_ort_baseline"] == cols["ort baseline"] / cols["ort dense"]
    assert row["runtime_vs_ort_baseline"] == cols["ort baseline"] / cols["runtime"]


def test_bench_models_baseline_must_name_a_model(tmp_path, capsys):
    from conftest import cli

    assert cli("bench", "models", "--model", f"a={tmp_path / 'a.slim'}", "--baseline", f"b={tmp_path / 'b.slim'}") == 2
    err = capsys.readouterr().err
    assert "--baseline 'b=" in err and "--model names (a)" in err and "Traceback" not in err


# --------------------------------------------------------------------------- convs on 1x1 planes

@pytest.mark.parametrize("kernel,padding,dilation,stride", [(3, 1, 1, 1), (5, 2, 1, 1), (3, 2, 2, 1), (1, 0, 1, 1),
                                                            (3, 1, 1, 2), ((3, 1), (1, 0), 1, 1)])
@pytest.mark.parametrize("sparse", [False, True])
def test_conv_on_a_single_pixel_becomes_an_exact_linear(kernel, padding, dilation, stride, sparse):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, kernel, stride=stride, padding=padding, dilation=dilation).double()
    if sparse:
        with torch.no_grad():
            conv.weight.mul_((torch.rand(conv.weight.shape) > 0.9).double())
        conv = SparseConv2d.from_conv(conv)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).eval()
    rm = RuntimeModel(model, [16, 1, 1], backend="eager")
    x = torch.randn(3, 16, 1, 1, dtype=torch.float64)
    got = rm(x)
    with torch.no_grad():
        want = model(x)
    assert (got - want).abs().max() < 1e-12
    graph_modules = [type(m) for m in rm._built[next(iter(rm._built))][0].modules()]
    assert SparseConv2d not in graph_modules and nn.Conv2d not in graph_modules


def test_vggs_last_block_on_1x1_planes_runs_as_linear_layers():
    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125)))  # 28 -> 14 -> 7 -> 3 -> 1: block5 on 1x1
    rm = _check(model, MNIST, "eager", batch=64)
    names = [e["name"] for e in rm.report()["shapes"][0]["layers"]]
    assert "features_block5_conv1_as_linear" in names and "features.block5.conv1" not in names


# --------------------------------------------------------------------------- max pools

@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (1, 4, 3, 3), (2, 1, 2, 2)])
def test_max_pool_2x2_is_identical_to_max_pool2d(shape):
    from slimkit.runtime.pool import max_pool_2x2

    x = torch.randn(*shape)
    x[0, 0, 0, 0] = float("nan")
    assert torch.allclose(max_pool_2x2(x), nn.functional.max_pool2d(x, 2, 2), rtol=0, atol=0, equal_nan=True)


@native
@pytest.mark.parametrize("batch", [1, 16])
def test_pools_of_a_pruned_vgg_run_the_fused_kernel_with_their_relu(batch):
    """In a graph that runs slimkit's kernels, every sparse conv -> ReLU -> 2x2 pool tail becomes one
    sparse_conv2d_relu_pool call, a dense conv's ReLU + pool one max_pool2x2(x, relu=True): no ReLU
    and no ATen pool is left, and the outputs match eager."""
    model = _prune(_randomize_bn(vgg.vgg11(MNIST, 10, width=0.125)))
    dense_third = model.features.block3.conv2.to_dense_module()  # a dense conv before the third pool
    model.features.block3.conv2 = dense_third
    rm = _check(model, MNIST, "eager", batch=batch)
    gm = rm._built[next(iter(rm._built))][0]
    fused = [n for n in gm.graph.nodes if n.target is torch.ops.slimkit.sparse_conv2d_relu_pool.default]
    pools = [n for n in gm.graph.nodes if n.target is torch.ops.slimkit.max_pool2x2.default]
    assert len(fused) == 3 and len(pools) == 1 and pools[0].args[1] is True
    from slimkit.runtime.pool import max_pool_2x2

    assert not any(n.target is max_pool_2x2 for n in gm.graph.nodes)


def test_pools_of_a_dense_graph_stay_aten_ops():
    """A graph without slimkit's kernels keeps its pools as ATen maxima (exportable for the
    onnxruntime backend)."""
    model = _randomize_bn(vgg.vgg11(MNIST, 10, width=0.125))
    rm = _check(model, MNIST, "eager", batch=2)
    gm = rm._built[next(iter(rm._built))][0]
    assert not any(n.target is torch.ops.slimkit.max_pool2x2.default for n in gm.graph.nodes)


def test_vggs_pools_are_rewritten_and_other_pools_kept():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.MaxPool2d(3, 2),
                          nn.MaxPool2d(2, 2, ceil_mode=True), nn.Flatten()).eval()
    rm = _check(model, [1, 15, 15], "eager")
    gm = rm._built[next(iter(rm._built))][0]
    from slimkit.runtime.pool import max_pool_2x2

    assert [n.target for n in gm.graph.nodes].count(max_pool_2x2) == 1
    assert sum(isinstance(m, nn.MaxPool2d) for m in gm.modules()) == 2


# --------------------------------------------------------------------------- memory

def test_runtime_keeps_freed_memory_and_says_so(monkeypatch):
    from slimkit.runtime import memory

    monkeypatch.setattr(memory, "_state", None)
    monkeypatch.setenv(memory.ENV, "0")
    assert memory.keep_freed_memory() == {"malloc": "unchanged (SLIMKIT_RUNTIME_MALLOC=0)"}
    monkeypatch.setattr(memory, "_state", None)
    monkeypatch.delenv(memory.ENV)
    state = memory.keep_freed_memory()
    assert memory.keep_freed_memory() is state  # once per process
    if sys.platform.startswith("linux"):
        assert state["malloc"].startswith("glibc mmap threshold 32 MiB, trim threshold 256 MiB")
    rm = compile_model(nn.Sequential(nn.Linear(4, 3)).eval(), [4], backend="eager")
    assert rm.report()["malloc"] == state["malloc"]
