"""Benchmark of kd_loss, forward + backward: native kernel vs eager reference vs torch.compile.

Targets (2 CPU cores, float32): 4096 x 1000 and 8192 x 32000 at least 5x eager and 2x
torch.compile. Minimum memory traffic per forward + backward: the forward reads both
logit matrices, the backward reads them again and writes the gradient (5 N C 4 bytes).
"""
from __future__ import annotations

from slimkit.bench._common import compiled, native_note

__all__ = ["run", "SHAPES", "QUICK_SHAPES"]

SHAPES = [(4096, 1000), (8192, 32000)]
QUICK_SHAPES = [(256, 1000)]
TEMPERATURE, ALPHA = 4.0, 0.9


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

    native_ok, why = native_note(student, "slimkit::kd_loss_forward")
    fns = {"native": step(kd_loss) if native_ok else None, "eager": step(kd_loss_reference)}
    notes = {"native": why}
    if not quick:
        fns["compile"] = step(compiled(kd_loss_reference))
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
