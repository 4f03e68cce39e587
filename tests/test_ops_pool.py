"""max_pool2x2: the fused 2x2 max pool (+ ReLU) kernel against F.max_pool2d, exactly."""
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from slimkit.ops import backend, max_pool2x2
from slimkit.ops.pool import max_pool2x2_reference

NATIVE = backend.native_available()
native = pytest.mark.skipif(not NATIVE, reason=f"native kernels unavailable ({backend.backend_name()})")

SHAPES = [(2, 3, 8, 8), (2, 3, 7, 9), (1, 4, 3, 3), (2, 1, 2, 2), (3, 2, 28, 28), (2, 5, 14, 14), (1, 2, 5, 34),
          (0, 3, 4, 4)]


def _input(shape, dtype, seed):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    if x.numel():
        flat = x.view(-1)
        flat[::7] = -flat[::7].abs()  # windows of negatives only, where ReLU matters
        flat[3] = float("nan")
        flat[min(10, flat.numel() - 1)] = float("inf")
        flat[min(17, flat.numel() - 1)] = float("-inf")
    return x


@native
@pytest.mark.parametrize("dtype, kernel", [(torch.float32, "best"), (torch.float32, "avx2"), (torch.float32, "default"),
                                           (torch.float64, "default")])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_max_pool2x2_equals_max_pool2d_exactly(shape, relu, dtype, kernel, monkeypatch):
    """Bit for bit (max is exact), NaN and infinities included, odd sizes dropping the last row
    and column as floor mode does, rows wider and narrower than one vector."""
    if kernel != "best":
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", kernel)
    x = _input(shape, dtype, seed=sum(shape) + relu)
    got = torch.ops.slimkit.max_pool2x2(x, relu)
    want = F.max_pool2d(x, 2, 2)
    want = F.relu(want) if relu else want
    assert got.shape == want.shape and got.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


@native
def test_max_pool2x2_opcheck():
    x = torch.randn(2, 3, 6, 7)
    opcheck(torch.ops.slimkit.max_pool2x2.default, (x, True))
    opcheck(torch.ops.slimkit.max_pool2x2.default, (x.double(), False))


@native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 7, 30, 31), (8, 200, 7, 7), (4, 1500, 3, 3), (3, 3000, 2, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_max_pool2x2_thread_splits(threads, shape):
    """Chunks of planes on several threads. Short rows are written in whole vectors whose
    surplus lanes land on the outputs that follow; at the end of a thread's chunk they must not
    (another thread's outputs), which these shapes (several chunks of 7-, 3-, 1- and 2-wide
    rows) would show as wrong values."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(*shape)
        assert torch.equal(torch.ops.slimkit.max_pool2x2(x, True), F.relu(F.max_pool2d(x, 2, 2)))
        assert torch.equal(torch.ops.slimkit.max_pool2x2(x, False), F.max_pool2d(x, 2, 2))
    finally:
        torch.set_num_threads(old)


@native
@pytest.mark.parametrize("x, match", [
    (torch.randn(3, 8, 8), "4-D"),
    (torch.ones(1, 2, 4, 4, dtype=torch.int32), "float32 or float64"),
    (torch.randn(1, 2, 1, 6), "smaller than the 2x2 window"),
])
def test_max_pool2x2_bad_input_is_a_python_error(x, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.slimkit.max_pool2x2(x, False)


def test_max_pool2x2_wrapper_falls_back_to_the_reference():
    """A gradient or a dtype the kernel does not take goes through F.max_pool2d (same values)."""
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = max_pool2x2(x, relu=True)
    y.sum().backward()
    assert x.grad is not None and torch.equal(y.detach(), F.relu(F.max_pool2d(x.detach(), 2, 2)))
    h = torch.randn(1, 2, 4, 4).half()
    assert torch.equal(max_pool2x2(h), max_pool2x2_reference(h))
