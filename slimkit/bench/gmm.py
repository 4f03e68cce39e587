"""Benchmark of gmm_prior, forward + backward: native kernel vs eager reference vs torch.compile.

Targets (2 CPU cores, float32, K = 16): N = 1.3M and 25M weights at least 30x eager and
4x torch.compile, with O(N) peak memory: at most two N-element float buffers (the weight
gradient the fused forward saves, and the scaled one the backward returns) plus 4 MB,
nothing N x K. Memory traffic counted per forward + backward, the same for every
implementation: read the weights twice, write their gradient once (3 N 4 bytes).
"""
from __future__ import annotations

from slimkit.bench._common import compiled, native_note

__all__ = ["run", "forward_backward", "SIZES", "QUICK_SIZES", "K"]

SIZES = [1_300_000, 25_000_000]
QUICK_SIZES = [100_000]
K = 16


def forward_backward(fn, params):
    """A callable running one forward + backward of ``fn(*params)``, gradients dropped first."""
    def run():
        for p in params:
            p.grad = None
        fn(*params).backward()
    return run


def _case(N: int, quick: bool) -> list[dict]:
    import torch

    from slimkit.bench.timing import bench_case
    from slimkit.ops.gmm import gmm_prior, gmm_prior_reference

    gen = torch.Generator().manual_seed(0)
    weights = (0.05 * torch.randn(N, generator=gen)).requires_grad_()
    means = torch.linspace(-0.2, 0.2, K).requires_grad_()
    log_vars = torch.full((K,), -7.0).requires_grad_()
    mix_logits = torch.zeros(K).requires_grad_()
    params = (weights, means, log_vars, mix_logits)

    def step(fn):
        return forward_backward(fn, params)

    native_ok, why = native_note(weights, "slimkit::gmm_prior_forward")
    fns = {"native": step(gmm_prior) if native_ok else None, "eager": step(gmm_prior_reference)}
    if not quick:
        fns["compile"] = step(compiled(gmm_prior_reference))
    rows = bench_case("gmm_prior", f"N={N:,} K={K}", fns, bytes_moved=3 * N * 4, warmup=1,
                      repeats=3 if N >= 10_000_000 else (5 if quick else 9),
                      target_eager=None if quick else 30.0, target_compile=None if quick else 4.0,
                      max_native_bytes=None if quick else 2 * N * 4 + (4 << 20), notes={"native": why},
                      reset=lambda: [setattr(p, "grad", None) for p in params])
    for p in params:
        p.grad = None
    return rows


def run(quick: bool = False) -> list[dict]:
    """Rows for every size (a small one when ``quick``; torch.compile only in the full run)."""
    rows = []
    for N in QUICK_SIZES if quick else SIZES:
        rows += _case(N, quick)
    return rows
