"""Benchmarks of sparse_conv2d (inference) and masked_conv2d (training step).

``run(quick)`` returns one row per (op, batch, sparsity, implementation), in the row
format of :mod:`slimkit.bench` plus ``batch``, ``sparsity`` and ``speedup`` (vs dense
conv2d, this module's baseline):

- ``sparse_conv2d`` forward, 3x3 128->128 on 32x32 (padding 1), fp32, batch 1 and 64:
  ``native sparse`` (``sparse_conv2d`` with its default crossover, so below it this row
  is the dense path it picks; ``note`` says which), ``dense conv2d`` on the same pruned
  weight, ``torch CSR (unfold + sparse mm)`` (im2col and a torch.sparse_csr matmul, the
  textbook alternative to a direct sparse convolution; at batch 64 only at 90 % and 95 %,
  its 300 MB im2col takes seconds) and ``compile`` (torch.compile'd dense conv2d; full
  run only);
- ``sparse_conv2d`` on small planes: VGG-11 (width 0.5) on 28x28 MNIST runs its widest
  layers on 3x3 output planes (128->256 and 256->256, 3x3, padding 1), 90 % sparse, batch 1
  and 64 (quick: 1 and 8): ``native sparse`` against ``dense conv2d``. There the kernel's
  tile is 1-2 vectors wide and runs the split-accumulator loop of sparse_conv_kernel.h
  (issue 12: slimkit's runtime against ONNX Runtime at batch 1, docs/BENCHMARKS.md); at
  batch 64 whole groups of images run one per vector lane (sparse_conv_lanes.h);
- ``masked_conv2d`` training step (forward + backward for input, weight and bias) at
  batch 64: ``native masked``, ``dense conv2d`` (no mask), ``eager`` (conv2d on
  weight * mask, autograd through the product) and ``compile`` (that, torch.compile'd);
- ``max_pool2x2 (relu)``: VGG-11 x0.5's four ReLU + 2x2 max pool tails at batch 64 (quick:
  8): ``native max_pool2x2`` against ``F.max_pool2d(F.relu(x))`` (the baseline), ``compile``
  (that, torch.compile'd) and the runtime's ATen path (in-place ReLU, three maxima);
- ``sparse_conv2d_relu_pool``: VGG-11 x0.5's 3x3 32->64 layer on 14x14 at 90 % with its ReLU and
  2x2 pool, batch 64 (quick: 8): ``native fused`` against ``sparse_conv2d + max_pool2x2`` and the
  dense conv -> ReLU -> pool, eager (the baseline) and ``compile``.

Implementations of one configuration are timed side by side
(:func:`slimkit.bench.timing.interleaved_times`) after warm-up; medians are reported.
Targets (full run): sparse >= 2.5x dense at 90 % sparsity and >= 4x at 95 %, never
slower than dense at <= 50 % (the dense path; 0.95x allows for timing noise); masked
training step <= 1.15x dense. ``quick`` is a smoke test (batch 1 and 8, three
sparsities, no torch.compile, no targets).
"""
from __future__ import annotations

import statistics
import warnings

__all__ = ["run", "SHAPE_NAME"]

C, OC, HW, K, PAD = 128, 128, 32, 3, 1
SHAPE_NAME = f"{K}x{K} {C}->{OC} {HW}x{HW} pad{PAD} fp32"


def _prune(weight, sparsity: float):
    """Magnitude pruning to the given fraction of zeros."""
    k = int(round(weight.numel() * sparsity))
    if k == 0:
        return weight.clone()
    threshold = weight.abs().flatten().kthvalue(k).values
    return weight * (weight.abs() > threshold)


def _csr_unfold_conv(x, csr, oc: int):
    """conv2d as im2col + torch.sparse_csr matmul (the non-direct sparse baseline)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    cols = F.unfold(x, K, padding=PAD)  # (N, C*K*K, L)
    rhs = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C*K*K, N*L)
    out = torch.sparse.mm(csr, rhs)  # (OC, N*L)
    return out.reshape(oc, n, h + 2 * PAD - K + 1, -1).transpose(0, 1)


def _sparse_goal(sparsity: float):
    if sparsity >= 0.95 - 1e-9:
        return 4.0, ">=4x dense"
    if sparsity >= 0.9 - 1e-9:
        return 2.5, ">=2.5x dense"
    if sparsity <= 0.5 + 1e-9:
        return 0.95, "not slower than dense (dense path)"
    return None, None


def _rows(op: str, batch: int, sparsity: float, samples: dict, baseline: str, goal_impl: str, goal, goal_text,
          nbytes: int, notes: dict, peak: dict, quick: bool, shape: str = SHAPE_NAME) -> list[dict]:
    medians = {name: statistics.median(s) for name, s in samples.items()}
    rows = []
    for impl, s in samples.items():
        speedup = medians[baseline] / medians[impl]
        target = goal_text if impl == goal_impl and goal is not None and not quick else None
        met = None if target is None else bool(speedup >= goal)
        rows.append({"op": op, "shape": shape, "impl": impl, "batch": batch, "sparsity": sparsity,
                     "median_ms": medians[impl], "ms": round(medians[impl], 3), "min_ms": min(s),
                     "repeats": len(s), "peak_extra_mb": peak.get(impl), "bytes": nbytes,
                     "speedup": speedup, "speedup_vs_eager": None, "speedup_vs_compile": None,
                     "target": target, "target_met": met, "note": notes.get(impl, "")})
    return rows


def _sparse_case(batch: int, sparsities, quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import compiled, native_note
    from slimkit.bench.timing import interleaved_times, peak_extra_bytes
    from slimkit.ops.conv import SparseConvWeight, sparse_conv2d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, C, HW, HW, generator=gen)
    w0 = torch.randn(OC, C, K, K, generator=gen)
    native_ok, why = native_note(x, "slimkit::sparse_conv2d")
    big = batch >= 16
    warmup, repeats = (1, 3) if quick else ((1, 9) if big else (3, 41))
    conv = None if quick else compiled(lambda x, w: F.conv2d(x, w, None, 1, PAD))  # one graph, weights as inputs
    rows = []
    for sparsity in sparsities:
        w = _prune(w0, sparsity)
        sw = SparseConvWeight.from_dense(w)
        # im2col at batch 64 is a 300 MB matrix and takes seconds: only where sparse formats are meant to pay
        with_csr = not big or sparsity >= 0.9
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = w.reshape(OC, -1).to_sparse_csr()
            fns = {
                "native sparse": lambda sw=sw: sparse_conv2d(x, sw, None, 1, PAD),
                "dense conv2d": lambda w=w: F.conv2d(x, w, None, 1, PAD),
            }
            if with_csr:
                fns["torch CSR (unfold + sparse mm)"] = lambda csr=csr: _csr_unfold_conv(x, csr, OC)
            if conv is not None:
                fns["compile"] = lambda w=w: conv(x, w)
            samples = interleaved_times(fns, warmup=warmup, repeats=repeats)
            peak = {"native sparse": peak_extra_bytes(fns["native sparse"]) / 2**20}
        path = "direct sparse kernel" if sw.uses_sparse and native_ok else "dense conv2d path"
        notes = {"native sparse": f"{path}: {sw.reason}" + ("" if native_ok else f"; {why}")}
        goal, goal_text = _sparse_goal(sparsity)
        nbytes = (x.numel() + batch * OC * HW * HW + sw.nnz * 2) * 4
        rows += _rows("sparse_conv2d", batch, sparsity, samples, "dense conv2d", "native sparse", goal, goal_text,
                      nbytes, notes, peak, quick)
    return rows


#: The small-plane case: (in, out) channels of VGG-11 width 0.5's convolutions on 3x3 planes.
SMALL_PLANE_LAYERS = ((128, 256), (256, 256))
SMALL_PLANE_HW, SMALL_PLANE_SPARSITY = 3, 0.9


def _small_plane_case(batch: int, quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import native_note
    from slimkit.bench.timing import interleaved_times
    from slimkit.ops.conv import SparseConvWeight, sparse_conv2d

    gen = torch.Generator().manual_seed(2)
    rows = []
    for c, oc in SMALL_PLANE_LAYERS:
        x = torch.randn(batch, c, SMALL_PLANE_HW, SMALL_PLANE_HW, generator=gen)
        w = _prune(torch.randn(oc, c, K, K, generator=gen), SMALL_PLANE_SPARSITY)
        sw = SparseConvWeight.from_dense(w)
        native_ok, why = native_note(x, "slimkit::sparse_conv2d")
        fns = {"native sparse": lambda sw=sw, x=x: sparse_conv2d(x, sw, None, 1, PAD),
               "dense conv2d": lambda w=w, x=x: F.conv2d(x, w, None, 1, PAD)}
        with torch.inference_mode():
            samples = interleaved_times(fns, warmup=1 if quick else 5, repeats=3 if quick else (15 if batch > 8 else 101))
        path = "direct sparse kernel (narrow tiles)" if sw.uses_sparse and native_ok else "dense conv2d path"
        notes = {"native sparse": f"{path}: {sw.reason}" + ("" if native_ok else f"; {why}")}
        shape = f"{K}x{K} {c}->{oc} {SMALL_PLANE_HW}x{SMALL_PLANE_HW} pad{PAD} fp32"
        nbytes = (x.numel() + batch * oc * SMALL_PLANE_HW ** 2 + sw.nnz * 2) * 4
        rows += _rows("sparse_conv2d small plane", batch, SMALL_PLANE_SPARSITY, samples, "dense conv2d", "native sparse",
                      None, None, nbytes, notes, {}, quick, shape=shape)
    return rows


def _masked_case(batch: int, sparsity: float, quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import compiled, native_note
    from slimkit.bench.timing import interleaved_times, peak_extra_bytes
    from slimkit.ops.conv import masked_conv2d, masked_conv2d_reference

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, C, HW, HW, generator=gen).requires_grad_(True)
    w = torch.randn(OC, C, K, K, generator=gen).requires_grad_(True)
    b = torch.randn(OC, generator=gen).requires_grad_(True)
    mask = (torch.rand(OC, C, K, K, generator=gen) >= sparsity).float()
    grad = torch.randn(batch, OC, HW, HW, generator=gen)

    def reset():
        x.grad = w.grad = b.grad = None

    def step(conv):
        def fn():
            reset()
            conv(x, w, mask, b).backward(grad)
        return fn

    native_ok, why = native_note(x, "slimkit::masked_conv2d_forward")
    fns = {
        "native masked": step(lambda x, w, m, b: masked_conv2d(x, w, m, b, 1, PAD)),
        "dense conv2d": step(lambda x, w, m, b: F.conv2d(x, w, b, 1, PAD)),
        "eager (conv2d on weight*mask)": step(lambda x, w, m, b: masked_conv2d_reference(x, w, m, b, 1, PAD)),
    }
    if not quick:
        fns["compile"] = step(compiled(lambda x, w, m, b: F.conv2d(x, w * m, b, 1, PAD)))
    samples = interleaved_times(fns, warmup=1, repeats=3 if quick else 7)
    peak = {name: peak_extra_bytes(fn, before=reset) / 2**20 for name, fn in fns.items()}
    reset()
    notes = {"native masked": "" if native_ok else f"reference ops: {why}"}
    # forward reads x, writes y; backward reads grad, x, writes grad_x (weights are small)
    nbytes = 5 * batch * C * HW * HW * 4
    # native ms <= 1.15 x dense ms, i.e. speed-up vs dense >= 1 / 1.15
    return _rows("masked_conv2d train step", batch, sparsity, samples, "dense conv2d", "native masked", 1 / 1.15,
                 "<=1.15x dense time", nbytes, notes, peak, quick)


#: The pool case: VGG-11 x0.5's four conv -> ReLU -> 2x2 pool tails on MNIST at batch 64.
POOL_SHAPES = ((32, 28), (64, 14), (128, 7), (256, 3))


def _pool_case(batch: int, quick: bool) -> list[dict]:
    """max_pool2x2(x, relu=True) against what a user would write (F.max_pool2d(F.relu(x))),
    that compiled (the strongest standard formulation), and the runtime's former ATen
    path (in-place ReLU, then three strided maxima)."""
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import compiled, native_note
    from slimkit.bench.timing import interleaved_times
    from slimkit.runtime.pool import max_pool_2x2

    gen = torch.Generator().manual_seed(3)
    compiled_pool = None if quick else compiled(lambda x: F.max_pool2d(F.relu(x), 2, 2))
    rows = []
    for c, hw in POOL_SHAPES:
        x = torch.randn(batch, c, hw, hw, generator=gen)
        native_ok, why = native_note(x, "slimkit::max_pool2x2")
        fns = {"F.max_pool2d(F.relu(x))": lambda x=x: F.max_pool2d(F.relu(x), 2, 2),
               "relu_ + 3 maxima (ATen)": lambda x=x: max_pool_2x2(x.relu_())}  # idempotent on x
        if native_ok:
            fns["native max_pool2x2"] = lambda x=x: torch.ops.slimkit.max_pool2x2(x, True)
        if compiled_pool is not None:
            fns["compile"] = lambda x=x: compiled_pool(x)
        with torch.inference_mode():
            samples = interleaved_times(fns, warmup=1 if quick else 5, repeats=3 if quick else 41)
        notes = {} if native_ok else {"F.max_pool2d(F.relu(x))": why}
        shape = f"relu + maxpool 2x2 {c}x{hw}x{hw} fp32"
        nbytes = (x.numel() + x.numel() // 4) * 4
        rows += _rows("max_pool2x2 (relu)", batch, 0.0, samples, "F.max_pool2d(F.relu(x))", "native max_pool2x2",
                      None, None, nbytes, notes, {}, quick, shape=shape)
    return rows


def _conv_pool_case(batch: int, quick: bool) -> list[dict]:
    """sparse_conv2d_relu_pool: VGG-11 x0.5's second layer (3x3 32->64 on 14x14, 90 %) with its ReLU
    and 2x2 pool in one call, against the two native calls, and the dense conv -> ReLU -> pool
    eager and compiled (the baseline a user would otherwise run)."""
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import compiled, native_note
    from slimkit.bench.timing import interleaved_times
    from slimkit.ops.conv import SparseConvWeight

    gen = torch.Generator().manual_seed(4)
    c, oc, hw = 32, 64, 14
    x = torch.randn(batch, c, hw, hw, generator=gen)
    w = _prune(torch.randn(oc, c, K, K, generator=gen), 0.9)
    b = torch.randn(oc, generator=gen)
    sw = SparseConvWeight.from_dense(w, min_sparsity=0.0)
    native_ok, why = native_note(x, "slimkit::sparse_conv2d_relu_pool")
    args = (sw.row_ptr, sw.col_idx, sw.values, list(w.shape), b, [1, 1], [PAD, PAD], [1, 1])
    fns = {"dense conv+relu+pool": lambda: F.max_pool2d(F.relu(F.conv2d(x, w, b, 1, PAD)), 2, 2)}
    if native_ok:
        fns["native fused"] = lambda: torch.ops.slimkit.sparse_conv2d_relu_pool(x, *args)
        fns["sparse_conv2d + max_pool2x2"] = lambda: torch.ops.slimkit.max_pool2x2(
            torch.ops.slimkit.sparse_conv2d(x, *args), True)
    if not quick:
        dense = compiled(lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, 1, PAD)), 2, 2))
        fns["compile"] = lambda: dense(x, w, b)
    with torch.inference_mode():
        samples = interleaved_times(fns, warmup=1 if quick else 5, repeats=3 if quick else 41)
    notes = {} if native_ok else {"dense conv+relu+pool": why}
    shape = f"{K}x{K} {c}->{oc} {hw}x{hw} pad{PAD} + relu + maxpool 2x2 fp32"
    nbytes = (x.numel() + batch * oc * (hw // 2) ** 2 + sw.nnz * 2) * 4
    return _rows("sparse_conv2d_relu_pool", batch, 0.9, samples, "dense conv+relu+pool", "native fused", None, None,
                 nbytes, notes, {}, quick, shape=shape)


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (see the module docstring)."""
    if quick:
        sparsities, batches, train_batch = (0.5, 0.9, 0.95), (1, 8), 8
    else:
        sparsities, batches, train_batch = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95), (1, 64), 64
    rows = []
    for batch in batches:
        rows += _sparse_case(batch, sparsities, quick)
    for batch in batches:
        rows += _small_plane_case(batch, quick)
    rows += _masked_case(train_batch, 0.9, quick)
    rows += _pool_case(64 if not quick else 8, quick)
    rows += _conv_pool_case(64 if not quick else 8, quick)
    return rows


def _main():
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = run(args.quick)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'op':25} {'impl':31} {'spars':>5} {'batch':>5} {'median ms':>10} {'vs dense':>8}  target")
    for r in rows:
        met = "" if r["target_met"] is None else (" ok" if r["target_met"] else " MISSED")
        print(f"{r['op']:25} {r['impl']:31} {r['sparsity']:5.2f} {r['batch']:5d} {r['median_ms']:10.3f} "
              f"{r['speedup']:7.2f}x  {r['target'] or ''}{met}")


if __name__ == "__main__":
    _main()
