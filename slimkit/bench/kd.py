"""Benchmark of kd_loss, forward + backward: native kernel vs the standard PyTorch formulation.

The baselines are what a user would write for Hinton distillation without slimkit
(:func:`kd_loss_standard`): ``F.kl_div`` of the two temperature-scaled log-softmaxes
with ``log_target=True`` and ``reduction="batchmean"``, times T^2, plus cross-entropy,
eager (``eager``) and under ``torch.compile`` (``compile``, the strongest of them: its
fused graph reads each logit matrix about once per pass). They compute the same loss as
:func:`slimkit.ops.kd.kd_loss` (checked before timing). slimkit's own reference formula
(:func:`slimkit.ops.kd.kd_loss_reference`, which materialises more N x C temporaries) is
not a baseline: it is not what users write, and at 8192 x 32000 its compiled form was
slower than the compiled standard formulation (docs/BENCHMARKS.md), so a speed-up
against it flatters the kernel.

Targets (2 CPU cores, float32): 4096 x 1000 and 8192 x 32000 at least 5x eager and 2x
compiled. Minimum memory traffic per forward + backward: the forward reads both logit
matrices, the backward reads them again and writes the gradient (5 N C 4 bytes); the
exponentials (3 per element and pass) are the other floor on a CPU.
"""
from __future__ import annotations

from slimkit.bench._common import compiled, native_note

__all__ = ["run", "kd_loss_standard", "SHAPES", "QUICK_SHAPES"]

SHAPES = [(4096, 1000), (8192, 32000)]
QUICK_SHAPES = [(256, 1000)]
TEMPERATURE, ALPHA = 4.0, 0.9


def kd_loss_standard(student, teacher, labels, temperature: float, alpha: float):
    """Hinton KD as it is usually written in PyTorch; the same value as ``kd_loss``."""
    import torch.nn.functional as F

    T = temperature
    soft = F.kl_div(F.log_softmax(student / T, dim=1), F.log_softmax(teacher.detach() / T, dim=1),
                    log_target=True, reduction="batchmean") * (T * T)
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student, labels)


def _case(N: int, C: int, quick: bool) -> list[dict]:
    import torch

    from slimkit.bench.timing import bench_case
    from slimkit.ops.kd import kd_loss, kd_loss_reference

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(N, C, generator=gen).requires_grad_()
    teacher = torch.randn(N, C, generator=gen)
    labels = torch.randint(0, C, (N,), generator=gen)

    def step(fn):
        def run():
            student.grad = None
            fn(student, teacher, labels, TEMPERATURE, ALPHA).backward()
        return run

    with torch.no_grad():  # the baseline computes the same loss (else its timing means nothing)
        want = kd_loss_reference(student, teacher, labels, TEMPERATURE, ALPHA)
        got = kd_loss_standard(student, teacher, labels, TEMPERATURE, ALPHA)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (float(got), float(want))
    native_ok, why = native_note(student, "slimkit::kd_loss_forward")
    fns = {"native": step(kd_loss) if native_ok else None, "eager": step(kd_loss_standard)}
    notes = {"native": why, "eager": "F.kl_div(log_target=True) + F.cross_entropy",
             "compile": "the same, torch.compile"}
    if not quick:
        fns["compile"] = step(compiled(kd_loss_standard))
    big = N * C >= 1 << 26
    rows = bench_case("kd_loss", f"{N}x{C}", fns, bytes_moved=5 * N * C * 4, warmup=1,
                      repeats=3 if big else (5 if quick else 15),
                      target_eager=None if quick else 5.0, target_compile=None if quick else 2.0, notes=notes,
                      reset=lambda: setattr(student, "grad", None))
    student.grad = None
    return rows


def run(quick: bool = False) -> list[dict]:
    """Rows for every shape (small ones when ``quick``; torch.compile only in the full run)."""
    rows = []
    for N, C in QUICK_SHAPES if quick else SHAPES:
        rows += _case(N, C, quick)
    return rows
