"""The CUDA kernels against the strongest standard GPU formulation: ``slimkit bench kernels --device cuda``.

Each case times slimkit's CUDA kernel beside what a user would otherwise run on the same
GPU, interleaved in one process (:func:`slimkit.bench.timing.interleaved_times`; every
call is followed by ``torch.cuda.synchronize``, so a time covers the whole launch):

* ``kd_loss``, forward + backward: ``F.kl_div(log_target=True)`` + cross-entropy, eager and
  under ``torch.compile`` (Triton fuses it into a couple of reductions).
* ``gmm_prior``, forward + backward: slimkit's reference formula (the mixture
  log-likelihood with ``logsumexp``), eager and compiled.
* ``masked_conv2d``, forward + backward: ``F.conv2d(x, w * mask)`` on cuDNN, eager and
  compiled; the native kernel is a direct convolution, so cuDNN is expected to win on
  large layers -- this row says by how much, honestly.
* ``sparse_conv2d`` / ``sparse_linear`` (inference, 90 % sparse): the dense layer on
  cuDNN / cuBLAS with the same (zero-filled) weight, and for the linear layer also
  ``torch.sparse.mm`` on a CSR tensor (cuSPARSE).

No targets are stated: the CPU targets of the other modules do not carry over, and the
numbers are recorded in docs/BENCHMARKS.md with the GPU's name.
"""
from __future__ import annotations

from slimkit.bench._common import compiled, native_note

__all__ = ["run"]


def _kd(quick: bool) -> list[dict]:
    import torch

    from slimkit.bench.kd import ALPHA, TEMPERATURE, kd_loss_standard
    from slimkit.bench.timing import bench_case
    from slimkit.ops.kd import kd_loss

    rows = []
    for N, C in [(256, 1000)] if quick else [(4096, 1000), (8192, 32000)]:
        gen = torch.Generator(device="cuda").manual_seed(0)
        student = torch.randn(N, C, generator=gen, device="cuda").requires_grad_()
        teacher = torch.randn(N, C, generator=gen, device="cuda")
        labels = torch.randint(0, C, (N,), generator=gen, device="cuda")

        def step(fn):
            def run():
                student.grad = None
                fn(student, teacher, labels, TEMPERATURE, ALPHA).backward()
            return run

        with torch.no_grad():
            got = kd_loss(student, teacher, labels, TEMPERATURE, ALPHA)
            want = kd_loss_standard(student, teacher, labels, TEMPERATURE, ALPHA)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (float(got), float(want))
        ok, why = native_note(student, "slimkit::kd_loss_forward")
        fns = {"native": step(kd_loss) if ok else None, "eager": step(kd_loss_standard)}
        if not quick:
            fns["compile"] = step(compiled(kd_loss_standard))
        rows += bench_case("kd_loss", f"{N}x{C}", fns, bytes_moved=5 * N * C * 4, warmup=2, repeats=5 if quick else 21,
                           notes={"native": why, "eager": "F.kl_div(log_target=True) + F.cross_entropy"},
                           reset=lambda: setattr(student, "grad", None))
    return rows


def _gmm(quick: bool) -> list[dict]:
    import torch

    from slimkit.bench.gmm import forward_backward
    from slimkit.bench.timing import bench_case
    from slimkit.ops.gmm import gmm_prior, gmm_prior_reference

    rows = []
    K = 16
    for N in [100_000] if quick else [1_300_000, 25_000_000]:
        gen = torch.Generator(device="cuda").manual_seed(0)
        params = ((0.05 * torch.randn(N, generator=gen, device="cuda")).requires_grad_(),
                  torch.linspace(-0.2, 0.2, K, device="cuda").requires_grad_(),
                  torch.full((K,), -7.0, device="cuda").requires_grad_(),
                  torch.zeros(K, device="cuda").requires_grad_())

        def step(fn, params=params):
            return forward_backward(fn, params)

        ok, why = native_note(params[0], "slimkit::gmm_prior_forward")
        fns = {"native": step(gmm_prior) if ok else None, "eager": step(gmm_prior_reference)}
        if not quick:
            fns["compile"] = step(compiled(gmm_prior_reference))
        rows += bench_case("gmm_prior", f"N={N:,} K={K}", fns, bytes_moved=3 * N * 4, warmup=2,
                           repeats=5 if quick else 21, notes={"native": why},
                           reset=lambda: [setattr(p, "grad", None) for p in params])
    return rows


def _masked_conv(quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from slimkit.bench.timing import bench_case
    from slimkit.ops.conv import masked_conv2d

    # VGG-11 width 0.5 on a 28x28 input: its second and fifth convolutions.
    cases = [(8, 32, 64, 14)] if quick else [(64, 32, 64, 14), (64, 128, 256, 7)]
    rows = []
    for n, c, oc, hw in cases:
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(n, c, hw, hw, generator=gen, device="cuda").requires_grad_()
        w = torch.randn(oc, c, 3, 3, generator=gen, device="cuda").requires_grad_()
        mask = (torch.rand(oc, c, 3, 3, generator=gen, device="cuda") >= 0.9).float()

        def standard(x, w, mask):
            return F.conv2d(x, w * mask, None, 1, 1)

        def step(fn):
            def run():
                x.grad = w.grad = None
                fn(x, w, mask).sum().backward()
            return run

        ok, why = native_note(x, "slimkit::masked_conv2d_forward")
        fns = {"native": step(lambda x, w, m: masked_conv2d(x, w, m, None, 1, 1)) if ok else None,
               "eager": step(standard)}
        if not quick:
            fns["compile"] = step(compiled(standard))
        rows += bench_case("masked_conv2d", f"{n}x{c}x{hw}x{hw} -> {oc}, 3x3, 90% masked", fns, bytes_moved=None,
                           warmup=2, repeats=5 if quick else 21,
                           notes={"native": why, "eager": "F.conv2d(x, w * mask) on cuDNN"},
                           reset=lambda: [setattr(t, "grad", None) for t in (x, w)])
    return rows


def _sparse_inference(quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from slimkit.bench.timing import bench_case
    from slimkit.ops import SparseConvWeight
    from slimkit.ops.linear import SparseLinearWeight

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in [1] if quick else [1, 64]:
        w = torch.randn(128, 64, 3, 3, generator=gen, device="cuda")
        w = w * (torch.rand(w.shape, generator=gen, device="cuda") >= 0.9)
        sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
        x = torch.randn(n, 64, 14, 14, generator=gen, device="cuda")
        ok, why = native_note(x, "slimkit::sparse_conv2d")
        fns = {"native": (lambda: torch.ops.slimkit.sparse_conv2d(x, sw.row_ptr, sw.col_idx, sw.values,
                                                                    list(w.shape), None, [1, 1], [1, 1], [1, 1]))
               if ok else None,
               "eager": lambda: F.conv2d(x, w, None, 1, 1)}
        rows += bench_case("sparse_conv2d", f"{n}x64x14x14 -> 128, 3x3, 90% sparse", fns, bytes_moved=None,
                           warmup=3, repeats=5 if quick else 31,
                           notes={"native": why, "eager": "dense F.conv2d on cuDNN, same zero-filled weight"})
        wl = torch.randn(1024, 1024, generator=gen, device="cuda")
        wl = wl * (torch.rand(wl.shape, generator=gen, device="cuda") >= 0.9)
        sl = SparseLinearWeight.from_dense(wl, min_sparsity=0.0)
        csr = wl.to_sparse_csr()
        xl = torch.randn(n, 1024, generator=gen, device="cuda")
        ok, why = native_note(xl, "slimkit::sparse_linear")
        fns = {"native": (lambda: torch.ops.slimkit.sparse_linear(xl, sl.row_ptr, sl.col_idx, sl.values,
                                                                    [1024, 1024], None)) if ok else None,
               "eager": lambda: F.linear(xl, wl),
               "cusparse": lambda: torch.sparse.mm(csr, xl.t()).t()}
        rows += bench_case("sparse_linear", f"{n}x1024 -> 1024, 90% sparse", fns, bytes_moved=None, warmup=3,
                           repeats=5 if quick else 31,
                           notes={"native": why, "eager": "dense F.linear on cuBLAS, same zero-filled weight",
                                  "cusparse": "torch.sparse.mm on a CSR tensor (cuSPARSE)"})
    return rows


def run(quick: bool = False) -> list[dict]:
    """Rows for every CUDA case (small shapes and no torch.compile when ``quick``)."""
    import torch

    from slimkit.errors import UserError

    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to this torch "
                        f"({torch.__version__}); run the benchmark on a machine with a GPU or use --device cpu")
    rows = []
    for part in (_kd, _gmm, _masked_conv, _sparse_inference):
        rows += part(quick)
    for row in rows:
        row["device"] = torch.cuda.get_device_name(0)
    return rows


def copy_bandwidth_gbps(nbytes: int = 1 << 30, repeats: int = 9) -> float:
    """Median device-to-device copy bandwidth of a ``nbytes`` float32 tensor, read + write (GB/s)."""
    import statistics

    import torch

    from slimkit.bench.timing import interleaved_times

    n = nbytes // 4
    src = torch.ones(n, device="cuda")
    dst = torch.empty(n, device="cuda")
    samples = interleaved_times({"copy": lambda: dst.copy_(src)}, warmup=2, repeats=repeats)["copy"]
    return 2 * n * 4 / (statistics.median(samples) / 1e3) / 1e9
