"""The CUDA kernels as a user meets them: schema checks (opcheck), gradients, bad input,
and a training step on the GPU.

The per-op files (test_ops_kd.py, test_ops_gmm.py, test_ops_conv.py, test_ops_linear.py)
compare each CUDA kernel's values with a float64 CPU reference. This file adds what
those do not: ``torch.library.opcheck`` on CUDA tensors (schema, fake kernel, autograd
registration, dispatch), ``gradcheck`` through the registered autograd, the TORCH_CHECKs
that turn a wrong device, dtype or shape into a Python error instead of a crash, and
methods that train with the kernels on the GPU. CI has no GPU: everything here skips
there and runs on a lent device (docs/BENCHMARKS.md records the last such run).
"""
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

from slimkit.ops import SparseConvWeight, backend, gmm_prior, kd_loss, masked_conv2d, sparse_conv2d
from slimkit.ops.linear import SparseLinearWeight

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OPS = torch.ops.slimkit


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pruned(w, sparsity, gen):
    return w * (torch.rand(w.shape, generator=gen) >= sparsity).to(w.dtype)


def test_every_op_has_a_cuda_kernel():
    assert backend.native_available(), backend.backend_name()
    for op in ("kd_loss_forward", "kd_loss_backward", "gmm_prior_forward", "gmm_prior_backward",
               "gmm_prior_value_and_grad", "masked_conv2d_forward", "masked_conv2d_backward",
               "sparse_conv2d", "sparse_linear"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"slimkit::{op}", "CUDA"), op


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_kd_loss(dtype):
    g = _gen(1)
    s = (3 * torch.randn(6, 37, generator=g, dtype=dtype)).cuda().requires_grad_()
    t = (3 * torch.randn(6, 37, generator=g, dtype=dtype)).cuda()
    y = torch.randint(0, 37, (6,), generator=g).cuda()
    y[0] = -100
    opcheck(OPS.kd_loss_forward.default, (s, t, y, 4.0, 0.9, -100))
    opcheck(OPS.kd_loss_forward.default, (s, t, None, 0.5, 0.5, -100))
    _, stats = OPS.kd_loss_forward(s.detach(), t, y, 4.0, 0.9, -100)
    opcheck(OPS.kd_loss_backward.default,
            (torch.tensor(1.5, dtype=dtype, device="cuda"), s.detach(), t, y, stats, 4.0, 0.9, -100))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_gmm_prior(dtype):
    g = _gen(2)
    w = (0.5 * torch.randn(300, generator=g, dtype=dtype)).cuda()
    means = (0.3 * torch.randn(5, generator=g, dtype=dtype)).cuda()
    log_vars = (torch.randn(5, generator=g, dtype=dtype) - 3).cuda()
    mix = torch.randn(5, generator=g, dtype=dtype).cuda()
    opcheck(OPS.gmm_prior_forward.default,
            (w.clone().requires_grad_(), means.clone().requires_grad_(), log_vars, mix.clone().requires_grad_()))
    opcheck(OPS.gmm_prior_backward.default, (torch.tensor(0.5, dtype=dtype, device="cuda"), w, means, log_vars, mix))
    opcheck(OPS.gmm_prior_value_and_grad.default, (w, means, log_vars.clone().requires_grad_(), mix))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_masked_conv2d(dtype):
    g = _gen(3)
    x = torch.randn(2, 6, 9, 7, generator=g, dtype=dtype).cuda().requires_grad_()
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=dtype).cuda().requires_grad_()
    m = (torch.rand(4, 3, 3, 3, generator=g) > 0.5).to(dtype).cuda()
    b = torch.randn(4, generator=g, dtype=dtype).cuda().requires_grad_()
    args = (x, w, m, b, [1, 2], [1, 1], [1, 1], 2)
    opcheck(OPS.masked_conv2d_forward.default, args)
    y = OPS.masked_conv2d_forward(*(a.detach() if torch.is_tensor(a) else a for a in args))
    opcheck(OPS.masked_conv2d_backward.default,
            (torch.randn_like(y), x.detach(), w.detach(), m, [1, 2], [1, 1], [1, 1], 2, [True, True, True]))


def test_opcheck_sparse_conv2d_and_linear():
    g = _gen(4)
    w = _pruned(torch.randn(5, 4, 3, 2, generator=g), 0.7, g).cuda()
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    x = torch.randn(2, 4, 7, 6, generator=g).cuda()
    opcheck(OPS.sparse_conv2d.default, (x, sw.row_ptr, sw.col_idx, sw.values, list(w.shape),
                                        torch.randn(5, generator=g).cuda(), [2, 1], [1, 0], [1, 2]))
    wl = _pruned(torch.randn(7, 13, generator=g), 0.7, g).cuda()
    sl = SparseLinearWeight.from_dense(wl, min_sparsity=0.0)
    for n in (1, 11, 64):
        opcheck(OPS.sparse_linear.default, (torch.randn(n, 13, generator=g).cuda(), sl.row_ptr, sl.col_idx,
                                            sl.values, [7, 13], torch.randn(7, generator=g).cuda()))


def test_gradcheck_through_the_registered_autograd():
    g = _gen(5)
    s = torch.randn(4, 9, generator=g, dtype=torch.float64).cuda().requires_grad_()
    t = torch.randn(4, 9, generator=g, dtype=torch.float64).cuda()
    y = torch.randint(0, 9, (4,), generator=g).cuda()
    assert torch.autograd.gradcheck(lambda a: kd_loss(a, t, y, 3.0, 0.7), (s,))
    w = torch.randn(40, generator=g, dtype=torch.float64).cuda().requires_grad_()
    means = torch.linspace(-1, 1, 3, dtype=torch.float64, device="cuda").requires_grad_()
    log_vars = torch.full((3,), -1.0, dtype=torch.float64, device="cuda").requires_grad_()
    mix = torch.zeros(3, dtype=torch.float64, device="cuda").requires_grad_()
    assert torch.autograd.gradcheck(gmm_prior, (w, means, log_vars, mix))
    x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64).cuda().requires_grad_()
    wc = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64).cuda().requires_grad_()
    m = (torch.rand(3, 2, 3, 3, generator=g) > 0.4).double().cuda()
    assert torch.autograd.gradcheck(lambda a, b: masked_conv2d(a, b, m, None, 1, 1), (x, wc))


@pytest.mark.parametrize("sparse_cuda", ["1", "0"])  # the kernel, and the default dense path
def test_sparse_conv2d_matches_cudnn_on_a_vgg_layer(sparse_cuda, monkeypatch):
    """A real layer shape (VGG-11 width 0.5, 14x14 plane, 90 % sparse), float32, batch 1 and 64."""
    monkeypatch.setenv("SLIMKIT_SPARSE_CUDA", sparse_cuda)
    g = _gen(6)
    w = _pruned(torch.randn(128, 64, 3, 3, generator=g), 0.9, g).cuda()
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    b = torch.randn(128, generator=g).cuda()
    for n in (1, 64):
        x = torch.randn(n, 64, 14, 14, generator=g).cuda()
        got = sparse_conv2d(x, sw, b, 1, 1)
        if sparse_cuda == "1":  # the direct kernel accumulates in float32
            want = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
        else:  # cuDNN on the dense weight, exactly what the dense layer gives (TF32 where torch allows it)
            torch.testing.assert_close(got, F.conv2d(x, w, b, 1, 1), rtol=0, atol=0)


def test_wrong_device_dtype_and_shape_are_python_errors():
    g = _gen(7)
    s = torch.randn(4, 9, generator=g).cuda()
    with pytest.raises(RuntimeError):
        OPS.kd_loss_forward(s, torch.randn(4, 9), None, 2.0, 0.5, -100)  # teacher on the CPU
    with pytest.raises(RuntimeError):
        OPS.kd_loss_forward(s, torch.randn(4, 8, device="cuda"), None, 2.0, 0.5, -100)  # shapes differ
    with pytest.raises(RuntimeError):
        OPS.gmm_prior_forward(torch.randn(10, device="cuda"), torch.zeros(65, device="cuda"),
                              torch.zeros(65, device="cuda"), torch.zeros(65, device="cuda"))  # K > 64
    w = _pruned(torch.randn(5, 13, generator=g), 0.5, g).cuda()
    sl = SparseLinearWeight.from_dense(w, min_sparsity=0.0)
    with pytest.raises(RuntimeError):
        OPS.sparse_linear(torch.randn(3, 12, device="cuda"), sl.row_ptr, sl.col_idx, sl.values, [5, 13], None)
    with pytest.raises(RuntimeError):
        OPS.sparse_linear(torch.randn(3, 13, device="cuda").double(), sl.row_ptr, sl.col_idx, sl.values, [5, 13],
                          None)
    with pytest.raises(RuntimeError):
        OPS.masked_conv2d_forward(torch.randn(1, 2, 5, 5, device="cuda"), torch.randn(3, 2, 3, 3, device="cuda"),
                                  torch.ones(3, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 1)  # mask on the CPU
    torch.cuda.synchronize()  # the device is still usable: nothing launched out of bounds
    assert float(torch.ones(3, device="cuda").sum()) == 3.0


@pytest.mark.parametrize("method,options", [("prune", ["--set", "sparsity=0.8"]),
                                            ("distill", []),
                                            ("sws", [])])  # sws: its default length (min_steps)
def test_methods_train_on_the_gpu(tmp_path, method, options):
    """The whole job on the GPU (slimkit trains on CUDA when it is there): digits, the default model."""
    import json

    from typer.testing import CliRunner

    from slimkit.cli import app

    out = tmp_path / method
    args = ["compress", "--method", method, "--baseline-epochs", "10", "--out", str(out), "--no-latency", *options]
    if method != "sws":
        args += ["--epochs", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["accuracy"] > 0.8, report["final"]
