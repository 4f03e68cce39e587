"""Benchmarks of sparse_linear (inference) and of whole pruned models through the sparse path.

``run(quick)`` returns rows in the format of :mod:`slimkit.bench` plus ``batch``,
``sparsity``, ``threads`` and ``speedup`` (vs the dense twin, this module's baseline):

- ``sparse_linear`` forward, 784 -> 300 (LeNet-300-100's fc1), fp32, batch 1 and 64, at
  0.5 - 0.95 sparsity: ``native sparse`` (``sparse_linear`` with its default crossovers,
  so below them this row is the dense path it picks; ``note`` says which), ``dense
  F.linear`` on the same pruned weight, ``compile`` (that dense F.linear under
  torch.compile; full run only) and ``torch CSR (sparse mm)`` (a torch.sparse_csr matmul,
  the stock alternative);
- ``sparse_mlp``: LeNet-300-100's three layers at 90 % in one call of the fused op (what
  slimkit's runtime lowers a Linear/ReLU run to) against three ``sparse_linear`` calls
  and the dense three ``F.linear``;
- ``end to end``: LeNet-300-100 (input 1x28x28) and VGG-11 at width 0.5 (1x28x28, 10
  classes: the MNIST model of docs/BENCHMARKS.md) with every conv and linear weight
  magnitude-pruned to 90 % (layer-wise, random init: speed depends on the sparsity
  pattern's density, not on training), converted with ``to_sparse_inference`` (``sparse
  path``) against the same weights as plain Conv2d/Linear (``dense``), batch 1 and 64.
  These are the models ``slimkit info --latency`` times; the rows here are measured the
  same way (:func:`slimkit.measure.measure_latency`: interleaved medians).

Target (full run): every end-to-end row of the sparse path faster than dense (speed-up
> 1). ``quick``: batch 1 only, LeNet-300-100 only, no targets.
"""
from __future__ import annotations

import statistics
import warnings

__all__ = ["run"]

OUT, IN = 300, 784


def _prune_(model, sparsity: float) -> None:
    """Layer-wise magnitude pruning of every Conv2d/Linear weight, in place."""
    import torch
    import torch.nn as nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(round(w.numel() * sparsity))
                if k:
                    w.mul_(w.abs() > w.abs().flatten().kthvalue(k).values)


def _row(op, shape, impl, batch, sparsity, samples_ms, baseline_ms, target=None, met=None, note=""):
    import torch

    med = statistics.median(samples_ms)
    return {"op": op, "shape": shape, "impl": impl, "batch": batch, "sparsity": sparsity,
            "threads": torch.get_num_threads(), "median_ms": med, "ms": round(med, 4), "min_ms": min(samples_ms),
            "repeats": len(samples_ms), "peak_extra_mb": None, "bytes": None, "speedup": baseline_ms / med,
            "speedup_vs_eager": None, "speedup_vs_compile": None, "target": target, "target_met": met, "note": note}


def _op_rows(batch: int, sparsities, quick: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import compiled, native_note
    from slimkit.bench.timing import interleaved_times
    from slimkit.ops.linear import SparseLinearWeight, sparse_linear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN, generator=gen)
    w0 = torch.randn(OUT, IN, generator=gen)
    b = torch.randn(OUT, generator=gen)
    native_ok, why = native_note(x, "slimkit::sparse_linear")
    linear = None if quick else compiled(lambda x, w, b: F.linear(x, w, b))  # one graph, weights as inputs
    rows = []
    for sparsity in sparsities:
        w = w0.clone()
        k = int(round(w.numel() * sparsity))
        if k:
            w = w * (w.abs() > w.abs().flatten().kthvalue(k).values)
        sw = SparseLinearWeight.from_dense(w)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = w.to_sparse_csr()
            fns = {"native sparse": lambda sw=sw: sparse_linear(x, sw, b),
                   "dense F.linear": lambda w=w: F.linear(x, w, b),
                   "torch CSR (sparse mm)": lambda csr=csr: torch.sparse.mm(csr, x.t()).t() + b}
            if linear is not None:
                fns["compile"] = lambda w=w: linear(x, w, b)
            samples = interleaved_times(fns, warmup=3 if quick else 20, repeats=5 if quick else 201)
        path = "sparse kernel" if sw.uses_sparse and native_ok else "dense F.linear path"
        dense = statistics.median(samples["dense F.linear"])
        for impl, s in samples.items():
            note = f"{path}: {sw.reason}" + ("" if native_ok else f"; {why}") if impl == "native sparse" else ""
            rows.append(_row("sparse_linear", f"{OUT}x{IN} fp32", impl, batch, sparsity, s, dense, note=note))
    return rows


def _mlp_rows(batch: int, quick: bool) -> list[dict]:
    """sparse_mlp: LeNet-300-100's three layers at 90 % in one call, against the same three
    sparse_linear calls with ReLU between them, and the dense three F.linear."""
    import torch
    import torch.nn.functional as F

    from slimkit.bench._common import native_note
    from slimkit.bench.timing import interleaved_times
    from slimkit.ops.linear import SparseLinearWeight

    gen = torch.Generator().manual_seed(1)
    shapes = [(300, 784), (100, 300), (10, 100)]
    ws = [torch.randn(o, i, generator=gen) for o, i in shapes]
    ws = [w * (w.abs() > w.abs().flatten().kthvalue(int(w.numel() * 0.9)).values) for w in ws]
    bs = [torch.randn(o, generator=gen) for o, _ in shapes]
    sws = [SparseLinearWeight.from_dense(w, min_sparsity=0.0) for w in ws]
    x = torch.randn(batch, 784, generator=gen)
    ok, why = native_note(x, "slimkit::sparse_mlp")
    if not ok:
        return [_row("sparse_mlp", "LeNet-300-100 90% fp32", "native", batch, 0.9, [float("nan")], 1.0, note=why)]
    none = torch.empty(0)
    args = ([s.row_ptr for s in sws], [s.col_idx for s in sws], [s.values for s in sws], [none] * 3,
            [v for o, i in shapes for v in (o, i)], bs, [1, 1, 0])
    op = torch.ops.slimkit.sparse_linear.default

    def chained():
        h = op(x, sws[0].row_ptr, sws[0].col_idx, sws[0].values, [300, 784], bs[0]).relu_()
        h = op(h, sws[1].row_ptr, sws[1].col_idx, sws[1].values, [100, 300], bs[1]).relu_()
        return op(h, sws[2].row_ptr, sws[2].col_idx, sws[2].values, [10, 100], bs[2])

    def dense():
        return F.linear(F.linear(F.linear(x, ws[0], bs[0]).relu_(), ws[1], bs[1]).relu_(), ws[2], bs[2])

    with torch.inference_mode():
        torch.testing.assert_close(torch.ops.slimkit.sparse_mlp(x, *args), dense(), rtol=1e-4, atol=1e-4)
        fns = {"native sparse_mlp (one call)": lambda: torch.ops.slimkit.sparse_mlp(x, *args),
               "3 sparse_linear calls": chained, "dense F.linear x3": dense}
        samples = interleaved_times(fns, warmup=3 if quick else 20, repeats=5 if quick else 201)
    base = statistics.median(samples["dense F.linear x3"])
    return [_row("sparse_mlp", "LeNet-300-100 90% fp32", impl, batch, 0.9, s, base) for impl, s in samples.items()]


def _model_rows(name: str, build, batches, quick: bool) -> list[dict]:
    import copy

    import torch

    from slimkit.measure import measure_latency
    from slimkit.nn import to_sparse_inference

    dense = build().eval()
    _prune_(dense, 0.9)
    sparse = copy.deepcopy(dense)
    reports = to_sparse_inference(sparse)
    n_sparse = sum(r.uses_sparse for r in reports)
    small = [r.name for r in reports if "calls with batch <" in r.reason]
    rows = []
    for batch in batches:
        with torch.inference_mode():
            # measure_latency (what `slimkit info --latency` uses) interleaves the two and returns medians
            lat = measure_latency({"dense": dense, "sparse path": sparse}, (1, 28, 28), batch_size=batch,
                                  warmup=3 if quick else 20, repeats=5 if quick else 200)
        for impl in ("dense", "sparse path"):
            target = None if quick or impl == "dense" else "faster than dense"
            met = None if target is None else bool(lat["dense"] > lat[impl])
            note = (f"{n_sparse} of {len(reports)} layers past their sparsity crossover"
                    + (f" ({', '.join(small)} dense below their batch floor)" if small else "")
                    if impl == "sparse path" else "same weights as plain Conv2d/Linear")
            rows.append(_row("end to end", f"{name} 90% pruned", impl, batch, 0.9, [lat[impl]], lat["dense"],
                             target, met, note))
    return rows


def run(quick: bool = False) -> list[dict]:
    """Benchmark rows (see the module docstring)."""
    from slimkit.models.lenet import lenet300
    from slimkit.models.vgg import vgg11

    sparsities = (0.5, 0.9) if quick else (0.5, 0.7, 0.8, 0.9, 0.95)
    rows = []
    for batch in ((1,) if quick else (1, 64)):
        rows += _op_rows(batch, sparsities, quick)
        rows += _mlp_rows(batch, quick)
    batches = (1,) if quick else (1, 64)
    rows += _model_rows("LeNet-300-100", lambda: lenet300((1, 28, 28), 10, seed=0), batches, quick)
    if not quick:
        rows += _model_rows("VGG-11 w0.5", lambda: vgg11((1, 28, 28), 10, width=0.5, seed=0), batches, quick)
    return rows
