"""masked_conv2d and sparse_conv2d: native kernels against a float64 conv2d reference.

Every case draws fresh random inputs; the reference is F.conv2d on weight * mask
(or on the pruned dense weight) computed in float64.
"""
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.library import opcheck

from slimkit.nn import MaskedConv2d, ModuleRegistry, SparseConv2d, to_sparse_inference
from slimkit.ops import SparseConvWeight, backend, masked_conv2d, sparse_conv2d
from slimkit.ops import conv as conv_ops

NATIVE = backend.native_available()
native = pytest.mark.skipif(not NATIVE, reason=f"native kernels unavailable ({backend.backend_name()})")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops run single-threaded: on a shared machine every parallel region can wait for a
    busy core. test_sparse_conv2d_thread_splits sets its own thread counts."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# (N, C, H, W, OC, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 4, 9, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 3, 7, 11, 5, (3, 3), (1, 1), (0, 0), (1, 1), 1),    # batch 1, odd sizes, no padding
    (3, 6, 10, 8, 4, (2, 3), (2, 1), (1, 2), (1, 1), 1),    # non-square kernel, asymmetric stride/padding
    (2, 5, 13, 12, 7, (3, 1), (3, 2), (2, 0), (2, 1), 1),   # stride 3x2, dilation
    (2, 4, 12, 12, 4, (3, 3), (2, 2), (2, 2), (2, 2), 1),   # dilation 2 with stride 2
    (4, 8, 6, 6, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1),    # 1x1
    (2, 6, 9, 7, 4, (3, 3), (1, 2), (1, 1), (1, 1), 2),     # groups (masked only)
    (1, 4, 8, 8, 4, (3, 3), (1, 1), (1, 1), (1, 1), 4),     # depthwise (masked only)
    (5, 3, 5, 6, 2, (5, 4), (1, 1), (2, 3), (1, 1), 1),     # kernel as large as the input
]


def _random_mask(shape, sparsity, gen):
    if sparsity == 0.0:
        return torch.ones(shape, dtype=torch.float64)
    if sparsity == 1.0:
        return torch.zeros(shape, dtype=torch.float64)
    return (torch.rand(shape, generator=gen, dtype=torch.float64) >= sparsity).double()


def _case_tensors(case, dtype, sparsity, seed):
    n, c, h, w, oc, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(oc, c // g, *k, generator=gen, dtype=torch.float64)
    bias = torch.randn(oc, generator=gen, dtype=torch.float64)
    mask = _random_mask(weight.shape, sparsity, gen)
    return x.to(dtype), weight.to(dtype), mask.to(dtype), bias.to(dtype)


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _case_id(c):
    return "x".join(map(str, c[:5])) + f"-k{c[5]}s{c[6]}p{c[7]}d{c[8]}g{c[9]}"


# ----------------------------------------------------------------------------- masked_conv2d

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_masked_conv2d_matches_reference(case, sparsity, dtype):
    x, w, m, b = _case_tensors(case, dtype, sparsity, seed=hash((case, sparsity)) % 2**31)
    *_, s, p, d, g = case
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    y = masked_conv2d(x, w, m, b, s, p, d, g)
    grad_y = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), grad_y)

    xr, wr, br = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    yr = F.conv2d(xr, wr * m.double(), br, s, p, d, g)
    gxr, gwr, gbr = torch.autograd.grad(yr, (xr, wr, br), grad_y.double())
    tol = _tol(dtype)
    torch.testing.assert_close(y.double(), yr, **tol)
    torch.testing.assert_close(gx.double(), gxr, **tol)
    torch.testing.assert_close(gw.double(), gwr, **tol)
    torch.testing.assert_close(gb.double(), gbr, **tol)
    assert (gw[m == 0] == 0).all(), "weight gradient must be exactly zero where the mask is zero"


@native
def test_masked_conv2d_native_op_masks_weight_grad_exactly():
    x, w, m, b = _case_tensors(CASES[0], torch.float32, 0.7, seed=1)
    *_, s, p, d, g = CASES[0]
    y = torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, list(s), list(p), list(d), g)
    gi, gw, gb = torch.ops.slimkit.masked_conv2d_backward(torch.randn_like(y), x, w, m, list(s), list(p), list(d), g,
                                                          [True, True, True])
    assert gi.shape == x.shape and gw.shape == w.shape and gb.shape == b.shape
    assert (gw[m == 0] == 0).all() and (gw[m != 0] != 0).any()
    # Unrequested gradients come back empty.
    gi, gw, gb = torch.ops.slimkit.masked_conv2d_backward(torch.randn_like(y), x, w, m, list(s), list(p), list(d), g,
                                                          [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0 and gw.shape == w.shape


@native
def test_masked_conv2d_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(4, 2, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=gen, requires_grad=True)
    m = (torch.rand(w.shape, dtype=torch.float64, generator=gen) > 0.4).double()
    fn = lambda x, w, b: torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, [2, 1], [1, 0], [1, 2], 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: masked_conv2d(x, w, m, None, 1, 1, 1, 2), (x, w))
    # Double backward (create_graph=True) goes through differentiable ATen ops; small sizes, it is slow.
    w2 = w.detach()[:2, :, :2, :2].clone().requires_grad_(True)
    b2 = b.detach()[:2].clone().requires_grad_(True)
    x2 = x.detach()[:1, :, :4, :4].clone().requires_grad_(True)
    m2 = m[:2, :, :2, :2]
    fn2 = lambda x, w, b: torch.ops.slimkit.masked_conv2d_forward(x, w, m2, b, [1, 1], [1, 0], [1, 1], 2)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn2, (x2, w2, b2))


def test_masked_conv2d_unbatched_and_string_padding():
    x, w, m, b = _case_tensors(CASES[0], torch.float64, 0.5, seed=5)
    ref = F.conv2d(x[0], w * m, b, 1, "same")
    torch.testing.assert_close(masked_conv2d(x[0], w, m, b, 1, "same"), ref)
    torch.testing.assert_close(masked_conv2d(x, w, m, b, 1, "valid"), F.conv2d(x, w * m, b))


def test_masked_conv2d_module_training_step_masks_gradient():
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 5, 3, padding=1)
    mask = (torch.rand_like(layer.weight) > 0.5).float()
    layer.set_mask(mask)
    layer(torch.randn(2, 3, 8, 8)).square().mean().backward()
    assert (layer.weight.grad[mask == 0] == 0).all()
    assert (layer.weight.grad[mask == 1] != 0).any() and layer.bias.grad is not None


@native
def test_masked_conv2d_opcheck():
    x, w, m, b = _case_tensors(CASES[2], torch.float64, 0.5, seed=7)
    *_, s, p, d, g = CASES[2]
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    opcheck(torch.ops.slimkit.masked_conv2d_forward.default, (x, w, m, b, list(s), list(p), list(d), g))
    x, w, m, _ = _case_tensors(CASES[6], torch.float32, 0.5, seed=8)
    *_, s, p, d, g = CASES[6]
    opcheck(torch.ops.slimkit.masked_conv2d_forward.default, (x, w, m, None, list(s), list(p), list(d), g))
    y = torch.ops.slimkit.masked_conv2d_forward(x, w, m, None, list(s), list(p), list(d), g)
    opcheck(torch.ops.slimkit.masked_conv2d_backward.default,
            (torch.randn_like(y), x, w, m, list(s), list(p), list(d), g, [True, True, False]))


@native
def test_masked_conv2d_under_torch_compile():
    torch.manual_seed(0)
    layer = MaskedConv2d(3, 4, 3, padding=1)
    layer.set_mask((torch.rand_like(layer.weight) > 0.5).float())
    x = torch.randn(2, 3, 6, 6)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    y_ref = F.conv2d(x, layer.weight * layer.weight_mask, layer.bias, 1, 1)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(grad, layer.weight.grad)


@native
@pytest.mark.parametrize("bad, match", [
    (lambda x, w, m, b: (x.int(), w, m, b, 1), "float32 or float64"),
    (lambda x, w, m, b: (x[0], w, m, b, 1), "4-D"),
    (lambda x, w, m, b: (x, w, m[:, :1], b, 1), "mask shape"),
    (lambda x, w, m, b: (x, w, m.double(), b, 1), "mask dtype"),
    (lambda x, w, m, b: (x, w.double(), m, b, 1), "weight dtype"),
    (lambda x, w, m, b: (x, w, m, b[:2], 1), "bias must have shape"),
    (lambda x, w, m, b: (x, w, m, b, 3), "channels"),
    (lambda x, w, m, b: (x[:, :, :1, :1], w, m, b, 1), "smaller than the dilated kernel"),
])
def test_masked_conv2d_bad_input_is_an_error(bad, match):
    x, w, m, b = _case_tensors(CASES[0], torch.float32, 0.5, seed=9)
    x, w, m, b, g = bad(x, w, m, b)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, [1, 1], [0, 0], [1, 1], g)


@native
def test_masked_conv2d_bad_arguments_are_errors():
    x, w, m, b = _case_tensors(CASES[0], torch.float32, 0.5, seed=10)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, [0, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="padding must be >= 0"):
        torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, [1, 1], [-1, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="groups must be >= 1"):
        torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, [1, 1], [0, 0], [1, 1], 0)
    y = torch.ops.slimkit.masked_conv2d_forward(x, w, m, b, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="grad_out shape"):
        torch.ops.slimkit.masked_conv2d_backward(y[:, :, 1:], x, w, m, [1, 1], [0, 0], [1, 1], 1, [True] * 3)


# ----------------------------------------------------------------------------- sparse_conv2d

def _pruned(weight, sparsity, gen):
    return weight * _random_mask(weight.shape, sparsity, gen).to(weight.dtype)


@native
@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "best"), (torch.float32, "avx2"), (torch.float32, "default"),
                                           (torch.float64, "default")])  # the ISA kernels are float32 only
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("case", [c for c in CASES if c[-1] == 1], ids=_case_id)
def test_sparse_conv2d_matches_dense_on_pruned_weight(case, sparsity, dtype, kernel, monkeypatch):
    # best: the run-time pick (avx512 / avx2 / base); avx2: at most AVX2; default: the baseline build
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    x, w, _, b = _case_tensors(case, dtype, 0.0, seed=hash((case, sparsity, 1)) % 2**31)
    w = _pruned(w, sparsity, torch.Generator().manual_seed(11))
    *_, s, p, d, _ = case
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)  # force the sparse kernel at every sparsity
    assert sw.uses_sparse
    y = sparse_conv2d(x, sw, b, s, p, d)
    yr = F.conv2d(x.double(), w.double(), b.double(), s, p, d)
    torch.testing.assert_close(y.double(), yr, **_tol(dtype))
    # The op itself, without the wrapper, with int64 indices and no bias.
    sw64 = SparseConvWeight.from_dense(w, min_sparsity=0.0, index_dtype=torch.int64)
    y = torch.ops.slimkit.sparse_conv2d(x, sw64.row_ptr, sw64.col_idx, sw64.values, list(w.shape), None, list(s),
                                        list(p), list(d))
    torch.testing.assert_close(y.double(), F.conv2d(x.double(), w.double(), None, s, p, d), **_tol(dtype))


@native
def test_sparse_conv2d_cpu_isa_is_reported(monkeypatch):
    best = torch.ops.slimkit.sparse_conv2d_cpu_isa()
    assert best in ("avx512", "avx2", "base")
    monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", "default")
    assert torch.ops.slimkit.sparse_conv2d_cpu_isa() == "base"
    monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", "avx2")
    assert torch.ops.slimkit.sparse_conv2d_cpu_isa() == ("base" if best == "base" else "avx2")


@native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 3, 4, 9])
def test_sparse_conv2d_thread_splits(batch, threads):
    # Both work splits (per image, per image x tile) and uneven thread counts.
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(batch * 10 + threads)
        x = torch.randn(batch, 40, 17, 23, generator=gen)
        w = _pruned(torch.randn(24, 40, 3, 3, generator=gen), 0.8, gen)
        b = torch.randn(24, generator=gen)
        y = sparse_conv2d(x, SparseConvWeight.from_dense(w, min_sparsity=0.0), b, 1, 1)
        torch.testing.assert_close(y.double(), F.conv2d(x.double(), w.double(), b.double(), 1, 1), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(old)


@native
def test_sparse_conv2d_unsorted_csr_columns():
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(2, 5, 8, 8, generator=gen, dtype=torch.float64)
    w = _pruned(torch.randn(3, 5, 3, 3, generator=gen, dtype=torch.float64), 0.5, gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    rp, ci, v = sw.row_ptr.clone(), sw.col_idx.clone(), sw.values.clone()
    for r in range(3):  # reverse every row
        lo, hi = int(rp[r]), int(rp[r + 1])
        ci[lo:hi], v[lo:hi] = ci[lo:hi].flip(0), v[lo:hi].flip(0)
    y = torch.ops.slimkit.sparse_conv2d(x, rp, ci, v, list(w.shape), None, [1, 1], [1, 1], [1, 1])
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1))


@native
@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "best"), (torch.float32, "avx2"), (torch.float32, "default"),
                                           (torch.float64, "default")])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_sparse_conv2d_small_planes_narrow_tiles(dtype, kernel, index_dtype, monkeypatch):
    """Planes of 1x1 to 6x7 outputs: tiles of 1 to 7 vectors, the narrow ones (1-3 vectors)
    on the loop that splits a row's nonzeros over several accumulator sets; rows of every
    length mod 8 (the sets' tails), empty rows, a bias."""
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    gen = torch.Generator().manual_seed(31)
    w = torch.randn(19, 16, 3, 3, generator=gen, dtype=torch.float64)
    keep = torch.rand(19, 16 * 9, generator=gen, dtype=torch.float64) < torch.linspace(0.0, 0.6, 19)[:, None]
    w = (w.reshape(19, -1) * keep).reshape(w.shape)
    assert (keep.sum(1) == 0).any() and len(set((keep.sum(1) % 8).tolist())) >= 5
    sw = SparseConvWeight.from_dense(w.to(dtype), min_sparsity=0.0, index_dtype=index_dtype)
    b = torch.randn(19, generator=gen, dtype=torch.float64)
    for h, wd in ((1, 1), (2, 2), (3, 3), (4, 4), (4, 5), (5, 5), (6, 7)):
        x = torch.randn(2, 16, h, wd, generator=gen, dtype=torch.float64)
        y = torch.ops.slimkit.sparse_conv2d(x.to(dtype), sw.row_ptr, sw.col_idx, sw.values, list(w.shape), b.to(dtype),
                                            [1, 1], [1, 1], [1, 1])
        torch.testing.assert_close(y.double(), F.conv2d(x, w, b, 1, 1), **_tol(dtype))


@native
@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "best"), (torch.float32, "default"),
                                           (torch.float64, "default")])
@pytest.mark.parametrize("threads", [1, 2])
def test_sparse_conv2d_image_groups_on_narrow_planes(dtype, kernel, threads, monkeypatch):
    """Many images of a narrow plane run in groups of 8, 4 or 2 that share each nonzero's
    loads; every batch size splits into full groups, smaller ones and a single image, per
    thread."""
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(33)
        w = _pruned(torch.randn(21, 24, 3, 3, generator=gen, dtype=torch.float64), 0.85, gen)
        sw = SparseConvWeight.from_dense(w.to(dtype), min_sparsity=0.0)
        b = torch.randn(21, generator=gen, dtype=torch.float64)
        for hw in (1, 2, 3, 4):
            for batch in (2, 3, 7, 8, 13, 22):
                x = torch.randn(batch, 24, hw, hw, generator=gen, dtype=torch.float64)
                y = torch.ops.slimkit.sparse_conv2d(x.to(dtype), sw.row_ptr, sw.col_idx, sw.values, list(w.shape),
                                                    b.to(dtype), [1, 1], [1, 1], [1, 1])
                torch.testing.assert_close(y.double(), F.conv2d(x, w, b, 1, 1), **_tol(dtype))
    finally:
        torch.set_num_threads(old)


@native
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_sparse_conv2d_unsorted_columns_across_channel_blocks(index_dtype):
    """Rows in reverse column order over many input channels (several channel blocks): the
    binary-searched block segments still cover every nonzero once."""
    gen = torch.Generator().manual_seed(32)
    x = torch.randn(1, 200, 12, 12, generator=gen, dtype=torch.float64)
    w = _pruned(torch.randn(6, 200, 3, 3, generator=gen, dtype=torch.float64), 0.8, gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0, index_dtype=index_dtype)
    rp, ci, v = sw.row_ptr.clone(), sw.col_idx.clone(), sw.values.clone()
    for r in range(6):
        lo, hi = int(rp[r]), int(rp[r + 1])
        ci[lo:hi], v[lo:hi] = ci[lo:hi].flip(0), v[lo:hi].flip(0)
    y = torch.ops.slimkit.sparse_conv2d(x, rp, ci, v, list(w.shape), None, [1, 1], [1, 1], [1, 1])
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1))


def test_sparse_weight_density_and_dense_path_choice(monkeypatch):
    gen = torch.Generator().manual_seed(13)
    w = torch.randn(8, 8, 3, 3, generator=gen)
    low = SparseConvWeight.from_dense(_pruned(w, 0.3, gen))
    assert not low.uses_sparse and "dense" in low.reason and "%" in low.reason
    assert math.isclose(low.density, low.nnz / w.numel()) and 0.5 < low.density < 0.9
    high = SparseConvWeight.from_dense(_pruned(w, 0.95, gen))
    assert high.uses_sparse and "sparse" in high.reason and high.density < 0.2
    torch.testing.assert_close(high.to_dense(), w * (high.to_dense() != 0))
    assert SparseConvWeight.from_dense(torch.zeros(4, 2, 3, 3)).density == 0.0
    # Below the crossover sparse_conv2d takes the dense conv2d path, whatever the backend.
    calls = []
    real = conv_ops.sparse_conv2d_reference
    monkeypatch.setattr(conv_ops, "sparse_conv2d_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 8, 6, 6, generator=gen)
    torch.testing.assert_close(sparse_conv2d(x, low, None, 1, 1), F.conv2d(x, low.to_dense(), None, 1, 1))
    assert calls == [1]
    if NATIVE:
        sparse_conv2d(x, high, None, 1, 1)
        assert calls == [1], "a weight above the crossover must run the native sparse kernel"


def test_sparse_conv2d_takes_dense_path_when_grad_is_needed():
    gen = torch.Generator().manual_seed(14)
    w = _pruned(torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64), 0.9, gen)
    x = torch.randn(1, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = sparse_conv2d(x, SparseConvWeight.from_dense(w, min_sparsity=0.0), None, 1, 1)
    (gx,) = torch.autograd.grad(y.sum(), x)
    xr = x.detach().requires_grad_(True)
    (gxr,) = torch.autograd.grad(F.conv2d(xr, w, None, 1, 1).sum(), xr)
    torch.testing.assert_close(gx, gxr)


@native
def test_sparse_conv2d_opcheck():
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(2, 4, 7, 6, generator=gen)
    w = _pruned(torch.randn(5, 4, 3, 2, generator=gen), 0.7, gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    opcheck(torch.ops.slimkit.sparse_conv2d.default,
            (x, sw.row_ptr, sw.col_idx, sw.values, list(w.shape), torch.randn(5, generator=gen), [2, 1], [1, 0],
             [1, 2]))


@native
def test_sparse_conv2d_bad_input_is_an_error():
    gen = torch.Generator().manual_seed(16)
    x = torch.randn(2, 4, 6, 6, generator=gen)
    w = _pruned(torch.randn(3, 4, 3, 3, generator=gen), 0.5, gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    rp, ci, v, shape = sw.row_ptr, sw.col_idx, sw.values, list(w.shape)
    op = torch.ops.slimkit.sparse_conv2d

    def call(x=x, rp=rp, ci=ci, v=v, shape=shape, bias=None, stride=(1, 1), padding=(1, 1), dilation=(1, 1)):
        return op(x, rp, ci, v, shape, bias, list(stride), list(padding), list(dilation))

    bad_rp = rp.clone()
    bad_rp[1], bad_rp[2] = bad_rp[2], bad_rp[1] - 1
    cases = [
        (dict(x=x.int()), "float32 or float64"),
        (dict(x=x[0]), "4-D"),
        (dict(x=x[:, :3]), "channels"),
        (dict(v=v.double()), "values dtype"),
        (dict(rp=rp[:-1]), "out_channels \\+ 1"),
        (dict(rp=bad_rp), "non-decreasing"),
        (dict(rp=rp - rp[1]), "row_ptr\\[0\\] must be 0"),
        (dict(ci=torch.full_like(ci, 36)), "outside \\[0, in_channels\\*kh\\*kw = 36\\)"),
        (dict(ci=-torch.ones_like(ci)), "outside"),
        (dict(ci=torch.full_like(ci, 36).long(), rp=rp.long()), "col_idx\\[0\\] = 36 is outside"),
        (dict(ci=torch.cat([ci[:-1], ci.new_tensor([-5])]).long()), f"col_idx\\[{ci.numel() - 1}\\] = -5 is outside"),
        (dict(ci=ci[:-1]), "entries but values has"),
        (dict(ci=ci.float()), "int32 or int64"),
        (dict(v=torch.stack([v, v], 1)[:, 0]), "contiguous"),
        (dict(bias=torch.randn(2)), "bias must have shape"),
        (dict(stride=(0, 1)), "stride must be >= 1"),
        (dict(padding=(-1, 1)), "padding must be >= 0"),
        (dict(dilation=(1, 0)), "dilation must be >= 1"),
        (dict(padding=(0, 0), x=x[:, :, :2]), "smaller than the dilated kernel"),
        (dict(shape=[3, 4, 3]), "weight_shape"),
    ]
    for kwargs, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call(**kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(stride=0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    (dict(stride=(1, 0)), ValueError, "stride must be >= 1"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(padding=(0, -2)), ValueError, "padding must be >= 0"),
    (dict(padding="same", stride=2), ValueError, "not supported for strided convolutions"),
    (dict(padding="full"), ValueError, "padding must be 'valid', 'same'"),
    (dict(stride=1.5), TypeError, "stride must be an int or a pair"),
    (dict(stride=(1, 1, 1)), ValueError, "stride must be an int or a pair"),
])
@pytest.mark.parametrize("kernels", ["native", "reference"])
def test_conv_arguments_are_python_errors(kwargs, exc, match, kernels, monkeypatch):
    """Bad stride / padding / dilation: a clear ValueError or TypeError from Python before any
    shape formula divides by them (stride=0 was a bare ZeroDivisionError), on either backend."""
    if kernels == "reference":
        monkeypatch.setenv("SLIMKIT_KERNELS", "reference")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 12, 12, generator=gen)
    w = _pruned(torch.randn(5, 4, 3, 3, generator=gen), 0.9, gen)
    args = dict(stride=1, padding=1, dilation=1) | kwargs
    with pytest.raises(exc, match=match):
        sparse_conv2d(x, SparseConvWeight.from_dense(w), None, **args)
    with pytest.raises(exc, match=match):
        masked_conv2d(x, w, (w != 0).float(), None, **args)
    if "padding" not in kwargs or not isinstance(kwargs["padding"], str):
        with pytest.raises(exc, match=match):
            SparseConv2d(4, 5, 3, **args)


def test_csr_weight_of_an_empty_shape_is_an_error():
    with pytest.raises(ValueError, match="of positive sizes"):
        SparseConvWeight.from_dense(torch.zeros(0, 4, 3, 3))
    from slimkit.ops.linear import SparseLinearWeight

    with pytest.raises(ValueError, match="of positive sizes"):  # was a ZeroDivisionError in its reason
        SparseLinearWeight.from_dense(torch.zeros(3, 0))


def test_sparse_weight_validation_errors():
    with pytest.raises(ValueError, match="row_ptr has"):
        SparseConvWeight(torch.zeros(3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0),
                         (3, 1, 1, 1))
    with pytest.raises(ValueError, match="col_idx must lie"):
        SparseConvWeight(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([5], dtype=torch.int32),
                         torch.ones(1), (1, 1, 2, 2))
    with pytest.raises(TypeError, match="SparseConvWeight"):
        sparse_conv2d(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3))


# ----------------------------------------------------------------------------- module and conversion

def test_sparse_conv2d_module_from_conv_and_state_dict_round_trip():
    torch.manual_seed(17)
    conv = MaskedConv2d(6, 8, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    conv.set_mask((torch.rand_like(conv.weight) > 0.9).float())
    x = torch.randn(2, 6, 11, 9)
    ref = F.conv2d(x, conv.weight * conv.weight_mask, conv.bias, conv.stride, conv.padding, conv.dilation)
    module = SparseConv2d.from_conv(conv)
    assert module.sparse_weight.uses_sparse
    with torch.no_grad():
        torch.testing.assert_close(module(x), ref, rtol=1e-4, atol=1e-4)
    state = module.state_dict()
    assert {"row_ptr", "col_idx", "values", "bias"} <= set(state)

    # Rebuild from the JSON spec, as storage does: empty CSR buffers, resized on load.
    registry = ModuleRegistry()
    registry.register(SparseConv2d)
    spec = json.loads(json.dumps(registry.spec(module)))
    rebuilt = registry.build(spec)
    assert rebuilt.values.numel() == 0
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), ref, rtol=1e-4, atol=1e-4)
    assert rebuilt.sparse_weight.nnz == module.sparse_weight.nnz

    corrupt = dict(state, col_idx=state["col_idx"] + 1000)
    with pytest.raises(RuntimeError, match="col_idx must lie"):
        registry.build(spec).load_state_dict(corrupt)


def test_to_sparse_inference_replaces_convs_and_reports():
    torch.manual_seed(18)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), MaskedConv2d(8, 8, 3, padding=1, bias=False),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Sequential(nn.Conv2d(8, 4, 1)))
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) > 0.95).float())
        model[2].set_mask((torch.rand_like(model[2].weight) > 0.2).float())
        model[4][0].weight.mul_((torch.rand_like(model[4][0].weight) > 0.5).float())
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        ref = model(x)
    reports = to_sparse_inference(model)
    names = [r[0] for r in reports]
    assert names == ["0", "2", "3", "4.0"]
    by_name = {name: (used, sparsity) for name, used, sparsity in reports}
    assert by_name["0"][0] and by_name["0"][1] > 0.8
    assert not by_name["2"][0] and 0.1 < by_name["2"][1] < 0.35
    assert not by_name["3"][0] and "grouped" in reports[2].reason
    assert not by_name["4.0"][0]
    assert isinstance(model[0], SparseConv2d) and isinstance(model[2], SparseConv2d)
    assert type(model[3]) is nn.Conv2d and isinstance(model[4][0], SparseConv2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
    # A lower threshold turns the 20 %-sparse layer into a sparse one.
    assert to_sparse_inference(nn.Sequential(MaskedConv2d(2, 2, 1)), min_sparsity=0.0)[0][1]


# ----------------------------------------------------------------------------- CUDA

@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_cuda_masked_conv2d(case, dtype):
    x, w, m, b = (t.cuda() for t in _case_tensors(case, dtype, 0.6, seed=19))
    *_, s, p, d, g = case
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    y = masked_conv2d(x, w, m, b, s, p, d, g)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    xr, wr, br = (t.detach().cpu().double().requires_grad_(True) for t in (x, w, b))
    yr = F.conv2d(xr, wr * m.cpu().double(), br, s, p, d, g)
    gxr, gwr, gbr = torch.autograd.grad(yr, (xr, wr, br), torch.ones_like(yr))
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else _tol(dtype)
    for got, want in ((y, yr), (gx, gxr), (gw, gwr), (gb, gbr)):
        torch.testing.assert_close(got.cpu().double(), want, **tol)
    assert (gw[m == 0] == 0).all()


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [c for c in CASES if c[-1] == 1], ids=_case_id)
def test_cuda_sparse_conv2d(case, dtype, monkeypatch):
    monkeypatch.setenv("SLIMKIT_SPARSE_CUDA", "1")  # the kernel, not the default dense path on a GPU
    x, w, _, b = _case_tensors(case, dtype, 0.0, seed=20)
    w = _pruned(w, 0.85, torch.Generator().manual_seed(21))
    *_, s, p, d, _ = case
    sw = SparseConvWeight.from_dense(w.cuda(), min_sparsity=0.0)
    y = sparse_conv2d(x.cuda(), sw, b.cuda(), s, p, d)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else _tol(dtype)
    torch.testing.assert_close(y.cpu().double(), F.conv2d(x.double(), w.double(), b.double(), s, p, d), **tol)


def test_tiny_output_planes_take_the_dense_path(monkeypatch):
    """Under SPARSE_MIN_POSITIONS output positions per image the direct kernel (vectorised
    over positions) would waste most lanes: sparse_conv2d runs dense conv2d, with equal results."""
    gen = torch.Generator().manual_seed(30)
    w = _pruned(torch.randn(16, 8, 3, 3, generator=gen), 0.9, gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    assert "under 9 positions run dense conv2d" in sw.reason
    calls = []
    real = conv_ops.sparse_conv2d_reference
    monkeypatch.setattr(conv_ops, "sparse_conv2d_reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    for hw, dense in ((1, True), (2, True), (3, False), (9, False)):  # 1, 4, 9, 81 output positions
        x = torch.randn(2, 8, hw, hw, generator=gen)
        calls.clear()
        y = sparse_conv2d(x, sw, None, 1, 1)
        assert calls == ([1] if dense or not NATIVE else []), hw
        torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the batch path
# Whole groups of images (8 float32 lanes on AVX2, 16 on AVX-512, 4 float64 lanes) go one image
# per vector lane (csrc/cpu/sparse_conv_lanes.h); SLIMKIT_SPARSE_CONV_LANES=1 forces that path
# on any plane, 0 forbids it, unset lets the op choose by the share of padding lanes.

@native
@pytest.mark.parametrize("lanes", ["1", "0", None])
@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "best"), (torch.float32, "avx2"), (torch.float32, "default"),
                                           (torch.float64, "default")])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_sparse_conv2d_batch_lanes_path_every_geometry(lanes, dtype, kernel, index_dtype, monkeypatch):
    """Every geometry of CASES (strides, dilations, asymmetric padding, a kernel as large as the
    input, 1x1) at batch 37: two or more full lane groups and a remainder of images that runs
    the per-image loop; rows of every length, empty rows, a bias."""
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    if lanes is not None:
        monkeypatch.setenv("SLIMKIT_SPARSE_CONV_LANES", lanes)
    for i, case in enumerate(c for c in CASES if c[-1] == 1):
        _, c, h, w_, oc, k, s, p, d, _ = case
        gen = torch.Generator().manual_seed(100 + i)
        x = torch.randn(37, c, h, w_, generator=gen, dtype=torch.float64)
        w = _pruned(torch.randn(oc, c, *k, generator=gen, dtype=torch.float64), 0.6, gen)
        w[0] = 0  # an empty row
        b = torch.randn(oc, generator=gen, dtype=torch.float64)
        sw = SparseConvWeight.from_dense(w.to(dtype), min_sparsity=0.0, index_dtype=index_dtype)
        y = torch.ops.slimkit.sparse_conv2d(x.to(dtype), sw.row_ptr, sw.col_idx, sw.values, list(w.shape),
                                            b.to(dtype), list(s), list(p), list(d))
        torch.testing.assert_close(y.double(), F.conv2d(x, w, b, s, p, d), **_tol(dtype))


@native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sparse_conv2d_batch_lanes_path_many_channels_threads(threads, monkeypatch):
    """Channel blocks, output-channel blocks and every tile shape of small planes (1x1 to 9x9,
    one plane wider than a tile), split over threads, rows in reverse column order."""
    monkeypatch.setenv("SLIMKIT_SPARSE_CONV_LANES", "1")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(40 + threads)
        w = _pruned(torch.randn(150, 96, 3, 3, generator=gen, dtype=torch.float64), 0.85, gen)
        sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
        rp, ci, v = sw.row_ptr.clone(), sw.col_idx.clone(), sw.values.clone()
        for r in range(150):
            lo, hi = int(rp[r]), int(rp[r + 1])
            ci[lo:hi], v[lo:hi] = ci[lo:hi].flip(0), v[lo:hi].flip(0)
        b = torch.randn(150, generator=gen, dtype=torch.float64)
        for hw in ((1, 1), (2, 3), (3, 3), (5, 5), (7, 7), (9, 9), (4, 13)):
            x = torch.randn(16, 96, *hw, generator=gen, dtype=torch.float64)
            y = torch.ops.slimkit.sparse_conv2d(x, rp, ci, v, list(w.shape), b, [1, 1], [1, 1], [1, 1])
            torch.testing.assert_close(y, F.conv2d(x, w, b, 1, 1), rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(old)


@native
@pytest.mark.parametrize("batch", [1, 3, 8, 20])
@pytest.mark.parametrize("geometry", [
    ((1, 1), (3, 3), (1, 1), (1, 1), (1, 1)),   # VGG's last block on MNIST: the centre tap alone
    ((2, 2), (5, 5), (1, 1), (2, 2), (1, 1)),   # the outer ring of taps reads only padding
    ((1, 3), (3, 3), (2, 1), (1, 1), (1, 1)),   # padding-only rows, real columns
    ((2, 2), (3, 3), (1, 1), (2, 2), (2, 2)),   # dilated: the corner taps miss the input
    ((3, 3), (3, 3), (2, 2), (1, 1), (1, 1)),   # strided: every tap reads some input (nothing dropped)
])
def test_sparse_conv2d_taps_that_read_only_padding_are_exact(batch, geometry):
    """Nonzeros of taps that meet only zero padding are dropped before the loop; the result is
    the dense convolution's, exactly as in float64."""
    hw, k, s, p, d = geometry
    gen = torch.Generator().manual_seed(sum(hw) * 10 + batch)
    x = torch.randn(batch, 12, *hw, generator=gen, dtype=torch.float64)
    w = _pruned(torch.randn(10, 12, *k, generator=gen, dtype=torch.float64), 0.5, gen)
    b = torch.randn(10, generator=gen, dtype=torch.float64)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    y = torch.ops.slimkit.sparse_conv2d(x, sw.row_ptr, sw.col_idx, sw.values, list(w.shape), b, list(s), list(p),
                                        list(d))
    torch.testing.assert_close(y, F.conv2d(x, w, b, s, p, d), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- conv + ReLU + pool

@native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "best"), (torch.float32, "default"),
                                           (torch.float64, "default")])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("lanes", ["auto", "1"])
def test_sparse_conv2d_relu_pool_equals_conv_relu_pool(threads, dtype, kernel, index_dtype, lanes, monkeypatch):
    """sparse_conv2d_relu_pool = max_pool2d(relu(conv)) on every path of the convolution: few
    images (batch 1, 3: the full output first), one image at a time and image groups (batch 9),
    the batch path with a remainder (batch 21; with lanes=1 on every plane, whose pool then runs
    on the interleaved output); odd planes drop their last row and column."""
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    if lanes != "auto":
        monkeypatch.setenv("SLIMKIT_SPARSE_CONV_LANES", lanes)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(50 + threads)
        w = _pruned(torch.randn(12, 20, 3, 3, generator=gen, dtype=torch.float64), 0.8, gen)
        b = torch.randn(12, generator=gen, dtype=torch.float64)
        sw = SparseConvWeight.from_dense(w.to(dtype), min_sparsity=0.0, index_dtype=index_dtype)
        for batch in (1, 3, 9, 21):
            for hw, s, p in (((28, 28), 1, 1), ((7, 7), 1, 1), ((3, 3), 1, 1), ((9, 6), 2, 1), ((5, 4), 1, 0)):
                x = torch.randn(batch, 20, *hw, generator=gen, dtype=torch.float64)
                y = torch.ops.slimkit.sparse_conv2d_relu_pool(x.to(dtype), sw.row_ptr, sw.col_idx, sw.values,
                                                              list(w.shape), b.to(dtype), [s, s], [p, p], [1, 1])
                want = F.max_pool2d(F.relu(F.conv2d(x, w, b, s, p)), 2, 2)
                torch.testing.assert_close(y.double(), want, **_tol(dtype))
        # Enough input channels for several channel blocks on a wide plane: the partial sums
        # of the per-image loop go through its virtual-width output and back.
        w2 = _pruned(torch.randn(5, 80, 3, 3, generator=gen, dtype=torch.float64), 0.8, gen)
        sw2 = SparseConvWeight.from_dense(w2.to(dtype), min_sparsity=0.0, index_dtype=index_dtype)
        x2 = torch.randn(4, 80, 30, 29, generator=gen, dtype=torch.float64)
        y2 = torch.ops.slimkit.sparse_conv2d_relu_pool(x2.to(dtype), sw2.row_ptr, sw2.col_idx, sw2.values,
                                                       list(w2.shape), None, [1, 1], [1, 1], [1, 1])
        torch.testing.assert_close(y2.double(), F.max_pool2d(F.relu(F.conv2d(x2, w2, None, 1, 1)), 2, 2),
                                   **_tol(dtype))
    finally:
        torch.set_num_threads(old)


@native
def test_sparse_conv2d_relu_pool_opcheck_and_bad_input():
    gen = torch.Generator().manual_seed(51)
    w = _pruned(torch.randn(6, 4, 3, 3, generator=gen), 0.5, gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    x = torch.randn(2, 4, 8, 7, generator=gen)
    args = (sw.row_ptr, sw.col_idx, sw.values, list(w.shape), None, [1, 1], [1, 1], [1, 1])
    opcheck(torch.ops.slimkit.sparse_conv2d_relu_pool.default, (x, *args))
    from slimkit.ops.conv import sparse_conv2d_relu_pool_reference

    torch.testing.assert_close(torch.ops.slimkit.sparse_conv2d_relu_pool(x, *args),
                               sparse_conv2d_relu_pool_reference(x, sw, None, 1, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="smaller than the 2x2 pooling window"):
        torch.ops.slimkit.sparse_conv2d_relu_pool(torch.randn(2, 4, 1, 5), *args)
    with pytest.raises(RuntimeError, match="input must be 4-D"):
        torch.ops.slimkit.sparse_conv2d_relu_pool(torch.randn(4, 8, 7), *args)
