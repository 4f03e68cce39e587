"""kd_loss: the native kernel against a float64 reference, gradients, dtypes, errors.

Tolerances: float64 inputs agree with the float64 reference to ~1e-10 (both are
exact up to rounding); float32 to 2e-5 relative (loss) / 2e-5 of max|grad| (float32
accumulation, exp within 20 ulp); float16 / bfloat16 inputs are converted exactly and
accumulated in float32, so the loss agrees to 1e-5 relative with the float64 loss of
the same (rounded) inputs, and the gradient, stored in the input dtype, to one unit of
that dtype's precision (eps * max|grad|).
"""
import math

import pytest
import torch

from slimkit.ops import backend, kd_loss
from slimkit.ops.kd import kd_loss_reference

ops = torch.ops.slimkit


@pytest.fixture(autouse=True)
def native(monkeypatch):
    """These tests are about the native kernel: it must be there (built by pip install or JIT)."""
    monkeypatch.delenv("SLIMKIT_KERNELS", raising=False)
    assert backend.load(), f"native kernels unavailable: {backend.backend_name()}"


def ref64(s, t, labels=None, T=4.0, alpha=0.9, ignore_index=-100):
    """Loss and d loss / d student in float64, from the reference."""
    s64 = s.detach().double().requires_grad_()
    loss = kd_loss_reference(s64, t.detach().double(), labels, T, alpha, ignore_index)
    (grad,) = torch.autograd.grad(loss, s64)
    return loss.detach(), grad


def native_loss_grad(s, t, labels=None, T=4.0, alpha=0.9, ignore_index=-100):
    s = s.detach().clone().requires_grad_()
    loss = kd_loss(s, t, labels, T, alpha, ignore_index)
    assert "slimkit_kd_loss_forward" in type(loss.grad_fn).__name__  # really the native op
    loss.backward()
    return loss.detach(), s.grad


def logits(N, C, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(N, C, generator=g, dtype=torch.float64)).to(dtype)
    t = (scale * torch.randn(N, C, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, C, (N,), generator=g)
    return s, t, y


def assert_close(loss, grad, loss_ref, grad_ref, rtol, gtol):
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert abs(loss.double().item() - loss_ref.item()) <= rtol * max(1.0, abs(loss_ref.item())), \
        (loss.item(), loss_ref.item())
    scale = max(grad_ref.abs().max().item(), 1e-30)
    err = (grad.double() - grad_ref).abs().max().item()
    assert err <= gtol * scale, (err, scale)


SHAPES = [(1, 1), (1, 7), (3, 1), (2, 15), (4, 16), (5, 17), (3, 33), (7, 255), (16, 1000), (2, 4099), (300, 47)]


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("N,C", SHAPES)
def test_matches_reference_over_shapes(N, C, dtype, rtol):
    s, t, y = logits(N, C, dtype, seed=N * 1000 + C)
    y[::3] = -100  # some ignored labels
    for labels, alpha in ((y, 0.9), (None, 0.3)):
        loss, grad = native_loss_grad(s, t, labels, 4.0, alpha)
        loss_ref, grad_ref = ref64(s, t, labels, 4.0, alpha)
        assert loss.dtype == dtype
        assert grad.dtype == dtype and grad.shape == s.shape
        assert_close(loss, grad, loss_ref, grad_ref, rtol, rtol)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 7.3, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9, 1.0])
def test_temperatures_and_alphas(T, alpha):
    s, t, y = logits(9, 131, torch.float32, seed=int(T * 10) + int(alpha * 100))
    loss, grad = native_loss_grad(s, t, y, T, alpha)
    loss_ref, grad_ref = ref64(s, t, y, T, alpha)
    assert_close(loss, grad, loss_ref, grad_ref, 2e-5, 2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [0.5, 4.0, 20.0])
def test_huge_logits(dtype, T):
    # +-1e4 logits: exp of the raw values overflows everywhere, the online softmax must not.
    s, t, y = logits(6, 301, dtype, scale=1e4, seed=7)
    s[0, :] = 1e4  # a row of ties
    t[1, 5] = -1e4
    loss, grad = native_loss_grad(s, t, y, T, 0.5)
    loss_ref, grad_ref = ref64(s, t, y, T, 0.5)
    assert_close(loss, grad, loss_ref, grad_ref, 1e-10 if dtype == torch.float64 else 2e-5,
                 1e-10 if dtype == torch.float64 else 2e-5)


def test_all_labels_ignored_gives_kl_only_not_nan():
    s, t, _ = logits(5, 40)
    y = torch.full((5,), -1, dtype=torch.long)
    loss, grad = native_loss_grad(s, t, y, 2.0, 0.6, ignore_index=-1)
    loss_ref, grad_ref = ref64(s, t, y, 2.0, 0.6, ignore_index=-1)
    assert_close(loss, grad, loss_ref, grad_ref, 2e-5, 2e-5)
    kl_only, _ = native_loss_grad(s, t, None, 2.0)
    assert loss.item() == pytest.approx(0.6 * kl_only.item(), rel=1e-6)


def test_labels_none_ignores_alpha():
    s, t, _ = logits(4, 50)
    a = kd_loss(s, t, None, 3.0, 0.1)
    b = kd_loss(s, t, None, 3.0, 0.9)
    assert a.item() == b.item()


def test_identical_logits_give_zero_kl_and_pure_ce():
    s, _, y = logits(8, 64)
    loss, _ = native_loss_grad(s, s.clone(), None, 4.0)
    assert abs(loss.item()) < 1e-6
    ce = torch.nn.functional.cross_entropy(s.double(), y)
    assert kd_loss(s, s.clone(), y, 4.0, 0.0).item() == pytest.approx(ce.item(), rel=1e-6)


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_nan_logit_gives_nan_loss(which):
    s, t, y = logits(3, 40)
    (s if which == "student" else t)[1, 7] = float("nan")
    assert math.isnan(kd_loss(s, t, y).item())


def test_no_gradient_to_teacher_and_grad_scales_with_upstream():
    s, t, y = logits(4, 30)
    s.requires_grad_()
    t.requires_grad_()
    (3.0 * kd_loss(s, t, y)).backward()
    assert t.grad is None
    _, g1 = native_loss_grad(s, t, y)
    torch.testing.assert_close(s.grad, 3.0 * g1, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype,eps", [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
@pytest.mark.parametrize("N,C", [(3, 5), (6, 100), (4, 2049)])
def test_half_precision(dtype, eps, N, C):
    s, t, y = logits(N, C, dtype, seed=C)
    loss, grad = native_loss_grad(s, t, y, 2.0, 0.7)
    loss_ref, grad_ref = ref64(s, t, y, 2.0, 0.7)  # the same rounded inputs, in float64
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, grad, loss_ref, grad_ref, 1e-5, eps)


def test_gradcheck_float64_native():
    s, t, y = logits(4, 19, torch.float64)
    y[1] = -100
    s.requires_grad_()
    assert backend.use_native(s, "slimkit::kd_loss_forward")
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, y, 2.5, 0.6), (s,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, None, 0.7), (s,))
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, y, 1.0, 0.0), (s,))


def test_deterministic_across_thread_counts():
    s, t, y = logits(257, 333)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_loss_grad(s, t, y)
        torch.set_num_threads(max(2, threads))
        many = native_loss_grad(s, t, y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_no_n_by_c_temporary():
    """Peak extra memory of forward + backward: the gradient (N x C) and O(N) statistics, nothing more."""
    from slimkit.bench.timing import peak_extra_bytes

    N, C = 512, 4096
    s, t, y = logits(N, C)
    s.requires_grad_()

    def step():
        kd_loss(s, t, y).backward()

    peak = peak_extra_bytes(step, before=lambda: setattr(s, "grad", None))
    assert peak <= N * C * 4 + 64 * N + (64 << 10), peak
    ref_peak = peak_extra_bytes(lambda: kd_loss_reference(s, t, y).backward(), before=lambda: setattr(s, "grad", None))
    assert ref_peak >= 3 * N * C * 4  # the check can tell: the reference does hold N x C temporaries


def test_opcheck():
    s, t, y = logits(5, 37)
    y[0] = -100
    s64, t64 = s.double().requires_grad_(), t.double()
    cases = [
        (ops.kd_loss_forward.default, (s.clone().requires_grad_(), t, y, 4.0, 0.9, -100)),
        (ops.kd_loss_forward.default, (s64, t64, None, 0.5, 0.9, -100)),
        (ops.kd_loss_forward.default, (s.half(), t.half(), y, 2.0, 0.0, -100)),
    ]
    _, stats = ops.kd_loss_forward(s, t, y, 4.0, 0.9, -100)
    cases.append((ops.kd_loss_backward.default, (torch.tensor(1.5), s, t, y, stats, 4.0, 0.9, -100)))
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    s, t, y = logits(8, 100)
    s.requires_grad_()
    f = torch.compile(lambda a, b, c: kd_loss(a, b, c, 2.0, 0.5), fullgraph=True, backend="aot_eager")
    f(s, t, y).backward()
    _, grad_ref = ref64(s, t, y, 2.0, 0.5)
    torch.testing.assert_close(s.grad.double(), grad_ref, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------- errors

def test_python_errors_are_clear():
    s, t, y = logits(4, 10)
    cases = [
        ((s.long(), t.long()), {}, TypeError, "float32, float64, float16 or bfloat16"),
        ((s, t.double()), {}, TypeError, "must equal student_logits dtype"),
        ((s[0], t[0]), {}, ValueError, "2-D"),
        ((s, t[:3]), {}, ValueError, "must equal student_logits shape"),
        ((s.t(), t.t()), {}, ValueError, "contiguous"),
        ((s, t.to("meta")), {}, ValueError, "device"),
        ((s, t, y), {"temperature": 0.0}, ValueError, "temperature"),
        ((s, t, y), {"temperature": -1.0}, ValueError, "temperature"),
        ((s, t, y), {"temperature": float("inf")}, ValueError, "temperature"),
        ((s, t, y), {"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\]"),
        ((s, t, y), {"alpha": -0.1}, ValueError, r"alpha must be in \[0, 1\]"),
        ((s, t, y.int()), {}, TypeError, "int64"),
        ((s, t, y[:2]), {}, ValueError, "labels must have shape"),
        ((s[:0], t[:0]), {}, ValueError, "non-empty"),
        (("x", t), {}, TypeError, "torch.Tensor"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            kd_loss(*args, **kwargs)


def test_label_out_of_range_is_an_error():
    s, t, y = logits(4, 10)
    y[2] = 10
    with pytest.raises(RuntimeError, match=r"labels\[2\] = 10 is outside \[0, 10\)"):
        kd_loss(s, t, y)
    y[2] = -5
    with pytest.raises(RuntimeError, match="outside"):
        kd_loss(s, t, y)


def test_native_op_checks_raise_runtime_error():
    s, t, y = logits(4, 10)
    cases = [
        ((s.long(), t.long(), None, 4.0, 0.9, -100), "float32, float64, float16 or bfloat16"),
        ((s, t.double(), None, 4.0, 0.9, -100), "must equal student dtype"),
        ((s[None], t[None], None, 4.0, 0.9, -100), "2-D"),
        ((s, t[:3], None, 4.0, 0.9, -100), "must have the student's shape"),
        ((s.t(), t.t(), None, 4.0, 0.9, -100), "contiguous"),
        ((s, t, None, 0.0, 0.9, -100), "temperature"),
        ((s, t, None, float("nan"), 0.9, -100), "temperature"),
        ((s, t, y, 4.0, 1.01, -100), "alpha"),
        ((s, t, y.int(), 4.0, 0.9, -100), "int64"),
        ((s, t, y[:3], 4.0, 0.9, -100), "labels must have shape"),
    ]
    for args, match in cases:
        with pytest.raises(RuntimeError, match=match):
            ops.kd_loss_forward(*args)
    _, stats = ops.kd_loss_forward(s, t, y, 4.0, 0.9, -100)
    with pytest.raises(RuntimeError, match="stats must be"):
        ops.kd_loss_backward(torch.tensor(1.0), s, t, y, stats[:2], 4.0, 0.9, -100)


def test_slimkit_cpu_capability_lowers_every_kernel_alike(monkeypatch):
    """One ISA choice for every CPU kernel: SLIMKIT_CPU_CAPABILITY moves kd_loss, gmm_prior and the
    sparse ops together (read per call), and every build computes the same loss and gradient."""
    from slimkit.ops import gmm_prior

    monkeypatch.delenv("SLIMKIT_CPU_CAPABILITY", raising=False)
    best = ops.kd_gmm_cpu_isa()
    assert best == ops.sparse_conv2d_cpu_isa() and best in ("avx512", "avx2", "base")
    s, t, y = logits(33, 1003, seed=5)
    gargs = [torch.randn(5000, dtype=torch.float64), torch.randn(7, dtype=torch.float64),
             torch.randn(7, dtype=torch.float64) - 2, torch.randn(7, dtype=torch.float64)]
    loss_ref, grad_ref = ref64(s, t, y)
    gmm_ref = gmm_prior(*gargs).item()
    for env, want in (("default", "base"), ("avx2", "base" if best == "base" else "avx2"), ("avx512", best)):
        monkeypatch.setenv("SLIMKIT_CPU_CAPABILITY", env)
        assert ops.kd_gmm_cpu_isa() == want and ops.sparse_conv2d_cpu_isa() == want
        assert_close(*native_loss_grad(s, t, y), loss_ref, grad_ref, 2e-5, 2e-5)
        assert gmm_prior(*gargs).item() == pytest.approx(gmm_ref, rel=1e-12)


# ------------------------------------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# The loss accumulates in float32 for float32, float16 and bfloat16 inputs alike, so they share the
# float32 loss tolerance (a bfloat16 5 x 40000 case measured 1.1e-5 relative on an H200, built with
# --use_fast_math); the gradient's tolerance is the input dtype's rounding.
@pytest.mark.parametrize("dtype,rtol,gtol", [(torch.float32, 2e-5, 2e-5), (torch.float64, 1e-10, 1e-10),
                                             (torch.float16, 2e-5, 2.0**-10), (torch.bfloat16, 2e-5, 2.0**-7)])
@pytest.mark.parametrize("N,C", [(1, 1), (3, 17), (64, 1000), (5, 40000)])
def test_cuda_matches_cpu_reference(dtype, rtol, gtol, N, C):
    assert backend.use_native(torch.empty(0, device="cuda"), "slimkit::kd_loss_forward")
    s, t, y = logits(N, C, dtype, seed=C)
    y[::2] = -100
    for labels, alpha, T in ((y, 0.9, 4.0), (None, 0.5, 0.5), (y, 0.0, 1.0), (y, 1.0, 20.0)):
        loss_ref, grad_ref = ref64(s, t, labels, T, alpha)
        sc = s.cuda().requires_grad_()
        loss = kd_loss(sc, t.cuda(), None if labels is None else labels.cuda(), T, alpha)
        loss.backward()
        assert_close(loss.cpu(), sc.grad.cpu(), loss_ref, grad_ref, rtol, gtol)
