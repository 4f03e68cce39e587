"""sparse_linear and SparseLinear: native kernels against a float64 F.linear reference.

Every case draws fresh random inputs and prunes a random weight; the reference is
F.linear on the pruned dense weight, computed in float64. Both CPU kernels are covered:
the row gather (batch < 8) and the batch-vector kernel (batch >= 8), in every ISA build.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.library import opcheck

from slimkit.nn import MaskedLinear, ModuleRegistry, SparseLinear, to_sparse_inference
from slimkit.ops import SparseLinearWeight, backend, sparse_linear
from slimkit.ops import linear as linear_ops

NATIVE = backend.native_available()
native = pytest.mark.skipif(not NATIVE, reason=f"native kernels unavailable ({backend.backend_name()})")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pruned(w, sparsity, gen):
    """w with round(sparsity * numel) entries, chosen at random, set to exactly zero."""
    k = round(w.numel() * sparsity)
    flat = w.clone().flatten()
    flat[torch.randperm(w.numel(), generator=gen)[:k]] = 0
    return flat.reshape(w.shape)


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _always_sparse(monkeypatch):
    """Take the sparse kernel for every call, however small (the wrapper's work floor off)."""
    monkeypatch.setattr(linear_ops, "SPARSE_LINEAR_MIN_MACS", 0)


# (out_features, in_features): 1x1, sizes that are not multiples of any vector width, LeNet-300's fc1
SHAPES = [(1, 1), (5, 3), (33, 17), (10, 100), (300, 784)]
BATCHES = [1, 2, 7, 8, 9, 17, 64]


@native
@pytest.mark.parametrize("kernel", ["best", "avx2", "default"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sparse_linear_matches_dense_on_pruned_weight(shape, sparsity, dtype, kernel, monkeypatch):
    # best: the run-time pick; avx2: at most AVX2; default: the baseline build
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    _always_sparse(monkeypatch)
    gen = torch.Generator().manual_seed(hash((shape, sparsity, str(dtype))) % 2**31)
    w = _pruned(torch.randn(*shape, generator=gen, dtype=dtype), sparsity, gen)
    b = torch.randn(shape[0], generator=gen, dtype=dtype)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)  # force the sparse kernel at every sparsity
    sw64 = SparseLinearWeight.from_dense(w, min_sparsity=0.0, index_dtype=torch.int64)
    assert sw.uses_sparse and sw.nnz == int((w != 0).sum())
    for n in BATCHES:
        x = torch.randn(n, shape[1], generator=gen, dtype=dtype)
        torch.testing.assert_close(sparse_linear(x, sw, b).double(), F.linear(x.double(), w.double(), b.double()),
                                   **_tol(dtype))
        # The op itself, with int64 indices and no bias.
        y = torch.ops.slimkit.sparse_linear(x, sw64.row_ptr, sw64.col_idx, sw64.values, list(w.shape), None)
        torch.testing.assert_close(y.double(), F.linear(x.double(), w.double()), **_tol(dtype))


@native
def test_sparse_linear_huge_values_and_long_rows():
    # A dense 1 x 5000 row at |x| ~ 1e4: accumulation order differs from the reference only by rounding.
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, 5000, generator=gen) * 1e2
    x = torch.randn(9, 5000, generator=gen) * 1e4
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    y = torch.ops.slimkit.sparse_linear(x, sw.row_ptr, sw.col_idx, sw.values, [3, 5000], None)
    ref = F.linear(x.double(), w.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 5, 8, 40])
def test_sparse_linear_thread_splits(batch, threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(batch * 10 + threads)
        w = _pruned(torch.randn(257, 700, generator=gen), 0.7, gen)  # enough work to split
        x = torch.randn(batch, 700, generator=gen)
        b = torch.randn(257, generator=gen)
        sw = SparseLinearWeight.from_dense(w)
        y = torch.ops.slimkit.sparse_linear(x, sw.row_ptr, sw.col_idx, sw.values, [257, 700], b)
        torch.testing.assert_close(y.double(), F.linear(x.double(), w.double(), b.double()), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(old)


@native
@pytest.mark.parametrize("batch", [3, 20])
def test_sparse_linear_unsorted_csr_columns(batch):
    gen = torch.Generator().manual_seed(12)
    w = _pruned(torch.randn(6, 40, generator=gen, dtype=torch.float64), 0.5, gen)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    rp, ci, v = sw.row_ptr.clone(), sw.col_idx.clone(), sw.values.clone()
    for r in range(6):  # reverse every row
        lo, hi = int(rp[r]), int(rp[r + 1])
        ci[lo:hi], v[lo:hi] = ci[lo:hi].flip(0), v[lo:hi].flip(0)
    x = torch.randn(batch, 40, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.ops.slimkit.sparse_linear(x, rp, ci, v, [6, 40], None), F.linear(x, w))


@native
def test_sparse_linear_opcheck():
    gen = torch.Generator().manual_seed(15)
    w = _pruned(torch.randn(7, 13, generator=gen), 0.7, gen)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    for n in (2, 11):
        opcheck(torch.ops.slimkit.sparse_linear.default,
                (torch.randn(n, 13, generator=gen), sw.row_ptr, sw.col_idx, sw.values, [7, 13],
                 torch.randn(7, generator=gen)))


@native
@pytest.mark.parametrize("batch", [2, 16])  # the row gather and the batch-vector kernel check columns each
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_sparse_linear_bad_input_is_an_error(batch, index_dtype):
    gen = torch.Generator().manual_seed(16)
    w = _pruned(torch.randn(3, 40, generator=gen), 0.5, gen)
    x = torch.randn(batch, 40, generator=gen)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0, index_dtype=index_dtype)
    rp, ci, v, shape = sw.row_ptr, sw.col_idx, sw.values, [3, 40]
    op = torch.ops.slimkit.sparse_linear

    def call(x=x, rp=rp, ci=ci, v=v, shape=shape, bias=None):
        return op(x, rp, ci, v, shape, bias)

    bad_rp = rp.clone()
    bad_rp[1], bad_rp[2] = bad_rp[2], bad_rp[1] - 1
    last_bad = ci.clone()
    last_bad[-1] = 40
    cases = [
        (dict(x=x.int()), "float32 or float64"),
        (dict(x=x[0]), "2-D"),
        (dict(x=x[:, :39]), "input has 39 features, the weight expects 40"),
        (dict(v=v.double()), "values dtype"),
        (dict(rp=rp[:-1]), "out_features \\+ 1"),
        (dict(rp=bad_rp), "non-decreasing"),
        (dict(rp=rp - rp[1]), "row_ptr\\[0\\] must be 0"),
        (dict(ci=torch.full_like(ci, 40)), "col_idx\\[0\\] = 40 is outside \\[0, in_features = 40\\)"),
        (dict(ci=last_bad), f"col_idx\\[{ci.numel() - 1}\\] = 40 is outside"),
        (dict(ci=-torch.ones_like(ci)), "= -1 is outside"),
        (dict(ci=ci[:-1]), "entries but values has"),
        (dict(ci=ci.float()), "int32 or int64"),
        (dict(v=torch.stack([v, v], 1)[:, 0]), "contiguous"),
        (dict(bias=torch.randn(2)), "bias must have shape"),
        (dict(shape=[3, 40, 1]), "weight_shape"),
        (dict(shape=[0, 40]), "bad weight_shape"),
    ]
    for kwargs, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call(**kwargs)


def test_sparse_linear_weight_validation_errors():
    with pytest.raises(ValueError, match="row_ptr has"):
        SparseLinearWeight(torch.zeros(3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0),
                           (3, 1))
    with pytest.raises(ValueError, match="col_idx must lie in \\[0, 4\\)"):
        SparseLinearWeight(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([4], dtype=torch.int32),
                           torch.ones(1), (1, 4))
    with pytest.raises(ValueError, match="2-D"):
        SparseLinearWeight.from_dense(torch.randn(2, 3, 1, 1))
    with pytest.raises(TypeError, match="SparseLinearWeight"):
        sparse_linear(torch.randn(1, 3), torch.randn(2, 3))


def test_dense_path_below_the_crossovers(monkeypatch):
    """Below SPARSE_LINEAR_MIN_SPARSITY, under SPARSE_LINEAR_MIN_MACS, or with autograd on,
    sparse_linear runs F.linear on the dense weight, whatever the backend."""
    gen = torch.Generator().manual_seed(13)
    w = torch.randn(64, 256, generator=gen)
    low = SparseLinearWeight.from_dense(_pruned(w, 0.5, gen))
    assert not low.uses_sparse and "dense F.linear" in low.reason
    high = SparseLinearWeight.from_dense(_pruned(w, 0.9, gen))
    assert high.uses_sparse and "sparse linear kernel" in high.reason
    assert math.isclose(high.density, high.nnz / w.numel())
    calls = []
    real = linear_ops.sparse_linear_reference
    monkeypatch.setattr(linear_ops, "sparse_linear_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    big = torch.randn(64, 256, generator=gen)  # 64 x 64 x 256 = 1 M MACs
    small = torch.randn(1, 256, generator=gen)  # 16 K MACs < the floor
    sparse_linear(big, low)
    assert calls == [1]
    sparse_linear(small, high)
    assert calls == [1, 1]
    xg = big.clone().requires_grad_(True)
    y = sparse_linear(xg, high)
    assert calls == [1, 1, 1]
    y.sum().backward()
    torch.testing.assert_close(xg.grad, high.to_dense().sum(0).expand(64, -1))
    sparse_linear(big, high)
    assert calls == [1, 1, 1] + ([] if NATIVE else [1])


@pytest.mark.parametrize("leading", [(), (3,), (2, 5)])
def test_sparse_linear_takes_any_leading_dims_like_f_linear(leading, monkeypatch):
    _always_sparse(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    w = _pruned(torch.randn(9, 20, generator=gen), 0.9, gen)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    x = torch.randn(*leading, 20, generator=gen)
    torch.testing.assert_close(sparse_linear(x, sw), F.linear(x, w), rtol=1e-5, atol=1e-5)


def test_reference_backend_gives_the_same_result(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    w = _pruned(torch.randn(30, 50, generator=gen), 0.9, gen)
    x = torch.randn(12, 50, generator=gen)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    _always_sparse(monkeypatch)
    native_y = sparse_linear(x, sw)
    monkeypatch.setenv("SLIMKIT_KERNELS", "reference")
    torch.testing.assert_close(sparse_linear(x, sw), native_y, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- module and conversion

def test_sparse_linear_module_from_linear_and_state_dict_round_trip():
    gen = torch.Generator().manual_seed(5)
    masked = MaskedLinear(40, 12)
    with torch.no_grad():
        masked.weight.copy_(torch.randn(12, 40, generator=gen))
        masked.weight_mask.copy_((torch.rand(12, 40, generator=gen) > 0.9).float())
        masked.weight.mul_(masked.weight_mask)  # slimkit keeps pruned weights exactly zero
    m = SparseLinear.from_linear(masked)
    assert m.weight_counts() == (480, int(masked.weight_mask.sum()))
    x = torch.randn(6, 40, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(m(x), masked(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.to_dense_module()(x), masked(x), rtol=1e-5, atol=1e-5)
    fresh = SparseLinear(40, 12)
    fresh.load_state_dict(m.state_dict())  # the CSR buffers are resized to the incoming ones
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), m(x))
    corrupt = dict(m.state_dict())
    corrupt["col_idx"] = corrupt["col_idx"] + 40
    with pytest.raises(RuntimeError, match="col_idx must lie"):
        SparseLinear(40, 12).load_state_dict(corrupt)
    # An in-place change of a buffer is seen by the next call (the cached CSR view is rebuilt).
    with torch.no_grad():
        m.values.mul_(2)
        torch.testing.assert_close(m(x) - m.bias, 2 * (masked(x) - masked.bias), rtol=1e-5, atol=1e-5)
    assert "SparseLinear" in [type_name.rsplit(".", 1)[-1] for type_name in _registered_types()]


def _registered_types():
    from slimkit.plugins import load_registry

    registry = load_registry()
    assert isinstance(registry.modules, ModuleRegistry)
    return registry.modules.names()


def test_to_sparse_inference_converts_lenet300_and_keeps_quantized_layers():
    from slimkit.models.lenet import lenet300
    from slimkit.nn import QuantizedLinear, quantized_twin, replace_layer

    gen = torch.Generator().manual_seed(6)
    model = lenet300((1, 28, 28), 10).eval()
    with torch.no_grad():
        for lin in (model.classifier.fc1, model.classifier.fc2):
            lin.weight.copy_(_pruned(lin.weight, 0.9, gen))
    x = torch.randn(5, 1, 28, 28, generator=gen)
    with torch.no_grad():
        want = model(x)
    reports = to_sparse_inference(model)
    assert [r.name for r in reports] == ["classifier.fc1", "classifier.fc2", "classifier.fc3"]
    assert [r.uses_sparse for r in reports] == [True, True, False]  # fc3 is dense: below the crossover
    assert all(isinstance(m, SparseLinear) for m in (model.classifier.fc1, model.classifier.fc3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)

    # A codebook-quantized layer keeps its (smaller) codebook form.
    model = lenet300((1, 28, 28), 10).eval()
    replace_layer(model, "classifier.fc2", quantized_twin(_masked_copy(model.classifier.fc2), "codebook",
                                                          num_codes=4))
    reports = {r.name: r for r in to_sparse_inference(model)}
    assert isinstance(model.classifier.fc2, QuantizedLinear)
    assert not reports["classifier.fc2"].uses_sparse and "codebook" in reports["classifier.fc2"].reason


def _masked_copy(lin):
    m = MaskedLinear(lin.in_features, lin.out_features)
    with torch.no_grad():
        m.weight.copy_(lin.weight)
        m.bias.copy_(lin.bias)
    return m


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_sparse_linear(dtype):
    gen = torch.Generator().manual_seed(20)
    for (out, k) in SHAPES:
        w = _pruned(torch.randn(out, k, generator=gen, dtype=dtype), 0.85, gen)
        sw = SparseLinearWeight.from_dense(w.cuda(), min_sparsity=0.0)
        for n in (1, 9, 64):
            x = torch.randn(n, k, generator=gen, dtype=dtype)
            y = torch.ops.slimkit.sparse_linear(x.cuda(), sw.row_ptr, sw.col_idx, sw.values, [out, k], None)
            tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else _tol(dtype)
            torch.testing.assert_close(y.cpu().double(), F.linear(x.double(), w.double()), **tol)


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_mlp_matches_its_reference_and_opcheck(dtype):
    """CSR and dense layers mixed, with and without bias and ReLU; an empty tensor means none."""
    from slimkit.ops.linear import sparse_mlp_reference

    gen = torch.Generator().manual_seed(31)
    none = torch.empty(0, dtype=dtype)
    w1 = _pruned(torch.randn(30, 20, generator=gen, dtype=dtype), 0.8, gen)
    w2 = torch.randn(7, 30, generator=gen, dtype=dtype)
    w3 = _pruned(torch.randn(5, 7, generator=gen, dtype=dtype), 0.5, gen)
    s1 = SparseLinearWeight.from_dense(w1, min_sparsity=0.0)
    s3 = SparseLinearWeight.from_dense(w3, min_sparsity=0.0)
    for n in (1, 9, 64):
        x = torch.randn(n, 20, generator=gen, dtype=dtype)
        args = (x, [s1.row_ptr, none, s3.row_ptr], [s1.col_idx, none, s3.col_idx], [s1.values, none, s3.values],
                [none, w2, none], [30, 20, 7, 30, 5, 7], [torch.randn(30, dtype=dtype), none, torch.randn(5, dtype=dtype)],
                [1, 1, 0])
        got = torch.ops.slimkit.sparse_mlp(*args)
        want = F.linear(torch.relu(F.linear(torch.relu(F.linear(x, w1, args[6][0])), w2)), w3, args[6][2])
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(sparse_mlp_reference(*args), want)
        opcheck(torch.ops.slimkit.sparse_mlp.default, args)


@native
def test_sparse_mlp_bad_input_is_an_error():
    gen = torch.Generator().manual_seed(32)
    none = torch.empty(0)
    w = _pruned(torch.randn(6, 4, generator=gen), 0.5, gen)
    sw = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    x = torch.randn(3, 4)
    ok = (x, [sw.row_ptr], [sw.col_idx], [sw.values], [none], [6, 4], [none], [1])
    torch.testing.assert_close(torch.ops.slimkit.sparse_mlp(*ok), torch.relu(F.linear(x, w)))
    bad = {
        "one entry per layer": (x, [sw.row_ptr], [sw.col_idx], [sw.values], [none], [6, 4, 2, 6], [none], [1]),
        "takes 5 features": (x, [sw.row_ptr], [sw.col_idx], [sw.values], [none], [6, 5], [none], [1]),
        "needs a dense weight": (x, [none], [none], [none], [none], [6, 4], [none], [0]),
        "dense weight must be": (x, [none], [none], [none], [torch.randn(6, 5)], [6, 4], [none], [0]),
        "2-D": (x.reshape(-1), [sw.row_ptr], [sw.col_idx], [sw.values], [none], [6, 4], [none], [1]),
    }
    for message, args in bad.items():
        with pytest.raises(RuntimeError, match=message):
            torch.ops.slimkit.sparse_mlp(*args)
