"""``slimkit bench models``: whole compressed models against the engines users deploy, side by side.

For each ``.slim`` model, each thread count and each batch size, in one process, these
run on the same fixed random batch, timed interleaved in rounds (order shuffled every
round, :func:`slimkit.bench.timing.interleaved_times`), each sample a loop of calls long
enough (>= ~5 ms) to be above timer noise; medians and interquartile ranges per call:

* ``eager dense``: the decoded dense model (:func:`slimkit.export.dense_model`: the same
  weights, zeros included) in PyTorch eager: what the ratios are against;
* ``compile dense``: ``torch.compile`` of that dense model (static shapes);
* ``ort dense``: ONNX Runtime on the ONNX file ``slimkit export`` writes (dense: ONNX
  Runtime has no use for the zeros of an unstructured model), one session per thread
  count, ``intra_op_num_threads`` = threads; needs the ``export`` extra, else the column
  says why it is missing;
* ``runtime dense``: slimkit's runtime (:mod:`slimkit.runtime`) on the dense model, which
  separates what the graph (frozen, BatchNorm folded, oneDNN) brings from what sparsity does;
* ``runtime``: slimkit's runtime on the compressed model as stored (CSR layers on
  slimkit's kernels), its backend chosen by measurement among ``candidates``;
* ``ort baseline``: with a baseline file given for the model (``NAME=FILE.slim`` plus
  ``--baseline NAME=BASELINE.slim``), ONNX Runtime on the uncompressed model: what a user
  deploys without slimkit. For a filter-pruned model, ``ort baseline / ort dense`` is the
  speed-up structured pruning gives inside ONNX Runtime, and ``ort baseline / runtime``
  slimkit's runtime against the uncompressed model there. Its output is checked against
  the baseline's own eager output (the weights differ from the compressed model's).
* ``deepsparse``: Neural Magic's DeepSparse (the reference sparse CPU engine, end-of-life at
  1.8) on the dense ONNX file, zeros included, which it exploits; only when ``deepsparse``
  imports (never a dependency: it pins numpy < 2 and onnx 1.14, so it lives in its own
  virtual environment; docs/BENCHMARKS.md says how). Its file comes from the TorchScript
  exporter at opset 13 with the batch fixed, which DeepSparse 1.8 reads; one engine per
  batch size and thread count (``num_cores`` = threads).

Every column's output is checked against eager before it is timed. The machine, its
load average before and after, and the runtime's choices go into the result.
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["COLUMNS", "models_command"]

COLUMNS = ("eager dense", "compile dense", "ort dense", "runtime dense", "runtime", "ort baseline", "deepsparse")
MIN_SAMPLE_MS = 5.0


def _ort_session(model, shape, threads: int, workdir: Path, name: str):
    """An ONNX Runtime session of the dense export, or the reason there is none."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed (pip install 'slimkit[export]')"
    from slimkit.errors import UserError
    from slimkit.export import export_model, ort_session, torchscript_onnx

    path = workdir / f"{name}.onnx"
    how = ""
    if not path.exists():
        try:
            export_model(model, shape, "onnx", path)
        except UserError as exc:
            # e.g. beside DeepSparse, which pins onnx 1.14, too old for PyTorch's dynamo exporter:
            # the TorchScript exporter writes the same graph (dynamic batch), checked below like any column
            try:
                torchscript_onnx(model, torch.zeros(2, *shape), path, opset=17, dynamic_batch=True)
            except Exception:
                return None, str(exc)
            how = f" (TorchScript exporter: slimkit export failed here: {str(exc)[:80]})"
    session = ort_session(path, threads)
    return session, f"onnxruntime {ort.__version__}{how}"


def _ort_call(entry: dict, column: str, model, name: str, threads: int, workdir: Path, x: torch.Tensor):
    """``(a call running ``model``'s ONNX Runtime session on ``x`` or None, the note)``; the session is made
    once per column and thread count and kept in ``entry``."""
    key = (column, threads)
    if key not in entry:
        entry[key] = _ort_session(model, entry["shape"], threads, workdir, name)
    session, note = entry[key]
    if session is None:
        return None, note
    feed = {session.get_inputs()[0].name: x.numpy()}
    return (lambda: session.run(None, feed)), note


def _deepsparse_call(entry: dict, batch: int, threads: int, workdir: Path, x: torch.Tensor):
    """``(a call running DeepSparse on ``x`` or None, the note)``; the engine is kept in ``entry``."""
    key = ("deepsparse", batch, threads)
    if key not in entry:
        try:
            import deepsparse
        except ImportError:
            entry[key] = None, "deepsparse not installed (optional; see docs/BENCHMARKS.md)"
        else:
            from slimkit.export import torchscript_onnx

            path = workdir / f"{entry['name']}-b{batch}-opset13.onnx"
            try:
                torchscript_onnx(entry["dense"], x, path, opset=13)
                engine = deepsparse.compile_model(str(path), batch_size=batch, num_cores=threads)
                entry[key] = engine, f"deepsparse {deepsparse.__version__}"
            except Exception as exc:  # an engine that cannot take the model is a note, not a crash
                entry[key] = None, f"deepsparse failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
    engine, note = entry[key]
    if engine is None:
        return None, note
    feed = [x.numpy()]
    return (lambda: engine.run(feed)), note


def _callables(entry: dict, batch: int, threads: int, workdir: Path, candidates) -> tuple[dict, dict, torch.Tensor]:
    from slimkit.runtime.capture import example_input
    from slimkit.runtime.select import outputs_match

    x = example_input(entry["shape"], batch)
    dense, model = entry["dense"], entry["model"]
    with torch.no_grad():
        want = dense(x)
    fns: dict[str, Callable | None] = {}
    notes: dict[str, str] = {}
    fns["eager dense"] = lambda: dense(x)
    key = ("compiled", batch)
    if key not in entry:
        entry[key] = torch.compile(dense, dynamic=False)
    compiled = entry[key]
    fns["compile dense"] = lambda: compiled(x)
    fns["ort dense"], notes["ort dense"] = _ort_call(entry, "ort dense", dense, entry["name"], threads, workdir, x)
    for column, runtime in (("runtime dense", entry["runtime_dense"]), ("runtime", entry["runtime"])):
        info = runtime.prepare(batch)
        notes[column] = info["backend"] + (" (recorded)" if info["choice"].get("cached") else "")
        fns[column] = (lambda r=runtime: r(x))
    wants = {}
    base = entry.get("baseline")
    if base is not None:
        with torch.no_grad():
            wants["ort baseline"] = base(x)
        fns["ort baseline"], notes["ort baseline"] = _ort_call(entry, "ort baseline", base, entry["name"] + "-baseline",
                                                               threads, workdir, x)
    fns["deepsparse"], notes["deepsparse"] = _deepsparse_call(entry, batch, threads, workdir, x)
    checks = {}
    with torch.no_grad():
        for name, fn in fns.items():
            if fn is None:
                continue
            got = fn()
            got = torch.from_numpy(got[0]) if isinstance(got, list) else got
            ok, err = outputs_match(got, wants.get(name, want))
            checks[name] = err
            if not ok:
                notes[name] = f"output differs from eager (rel. error {err:.2g}); not timed"
                fns[name] = None
    return fns, {"notes": notes, "max_rel_error": checks}, x


def _time(fns: dict, rounds: int) -> dict[str, list[float]]:
    from slimkit.bench.timing import interleaved_times

    live = {k: f for k, f in fns.items() if f is not None}
    with torch.no_grad():
        probe = interleaved_times(live, warmup=3, repeats=3)
        loops = {k: max(1, int(MIN_SAMPLE_MS / max(min(v), 1e-3))) for k, v in probe.items()}

        def looped(fn, n):
            def run():
                for _ in range(n):
                    fn()
            return run

        samples = interleaved_times({k: looped(f, loops[k]) for k, f in live.items()}, warmup=1, repeats=rounds)
    return {k: [v / loops[k] for v in s] for k, s in samples.items()}


def _load(name: str, path: str, candidates, baseline: str | None = None) -> dict:
    from slimkit import storage
    from slimkit.errors import UserError
    from slimkit.export import dense_model
    from slimkit.plugins import get_registry
    from slimkit.runtime import RuntimeModel

    loaded = storage.load_model(path, get_registry())
    shape = loaded.header.get("input_shape")
    if not shape:
        raise UserError(f"{path} records no input_shape")
    model = loaded.model.eval()
    dense = dense_model(model)
    base = None
    if baseline is not None:
        base_loaded = storage.load_model(baseline, get_registry())
        if list(base_loaded.header.get("input_shape") or []) != list(shape):
            raise UserError(f"--baseline {baseline}: input shape {base_loaded.header.get('input_shape')} is not "
                            f"{name}'s {shape}; give the baseline the compressed model was made from")
        base = dense_model(base_loaded.model.eval())
    return {"name": name, "path": path, "shape": shape, "model": model, "dense": dense, "baseline": base,
            "runtime": RuntimeModel(model, shape, candidates=candidates),
            "runtime_dense": RuntimeModel(dense, shape, candidates=candidates),
            "sparsity": _sparsity(model)}


def _sparsity(model) -> float:
    from slimkit.measure import prunable_sparsity

    return prunable_sparsity(model)


def models_command(models: list[tuple[str, str]], *, threads=(1, 2), batches=(1, 64), rounds: int = 15,
                   candidates=("jit", "freeze", "onnxruntime", "eager"), baselines: dict[str, str] | None = None) -> dict[str, Any]:
    """Benchmark each (name, .slim path), with ``baselines`` ``{name: uncompressed .slim}`` where given;
    returns ``{"machine", "load_before", "load_after", "rows"}``."""
    from slimkit.bench import _machine

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    entries = [_load(name, path, candidates, (baselines or {}).get(name)) for name, path in models]
    previous_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-") as tmp:
        try:
            for t in threads:
                torch.set_num_threads(int(t))
                for entry in entries:
                    for b in batches:
                        fns, extra, _ = _callables(entry, int(b), int(t), Path(tmp), candidates)
                        samples = _time(fns, rounds)
                        rows.append(_row(entry, int(t), int(b), samples, extra))
        finally:
            torch.set_num_threads(previous_threads)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"machine": _machine(), "load_before": load_before, "load_after": load_after, "rounds": rounds,
            "rows": rows}


def _row(entry: dict, threads: int, batch: int, samples: dict, extra: dict) -> dict:
    cols = {}
    for name in COLUMNS:
        s = samples.get(name)
        if not s:
            cols[name] = {"median_ms": None, "iqr_ms": None, "note": extra["notes"].get(name, "")}
            continue
        q = statistics.quantiles(s, n=4)
        cols[name] = {"median_ms": statistics.median(s), "iqr_ms": q[2] - q[0], "note": extra["notes"].get(name, ""),
                      "max_rel_error": extra["max_rel_error"].get(name)}
    base = cols["eager dense"]["median_ms"]
    for c in cols.values():
        c["speedup_vs_eager"] = base / c["median_ms"] if base and c["median_ms"] else None
    ort = cols["ort dense"]["median_ms"]
    runtime = cols["runtime"]["median_ms"]
    ort_base = cols["ort baseline"]["median_ms"]
    return {"model": entry["name"], "sparsity": entry["sparsity"], "threads": threads, "batch": batch,
            "columns": cols, "runtime_vs_ort": ort / runtime if ort and runtime else None,
            "ort_vs_ort_baseline": ort_base / ort if ort and ort_base else None,
            "runtime_vs_ort_baseline": ort_base / runtime if runtime and ort_base else None,
            "runtime_vs_deepsparse": (cols["deepsparse"]["median_ms"] / runtime
                                      if runtime and cols["deepsparse"]["median_ms"] else None)}


def print_models(result: dict, console) -> None:
    """A table: per model / threads / batch, each column's median ms (IQR) and speed-up over eager."""
    from rich.table import Table

    m = result["machine"]
    load = result["load_before"], result["load_after"]
    title = (f"slimkit bench models - torch {m['torch']}, {m['cpu']}, {m['cpu_count']} CPUs; load avg "
             f"{load[0][0]:.1f} before / {load[1][0]:.1f} after" if load[0] else "slimkit bench models")
    table = Table(title=title, caption="median ms per call (IQR), x = speed-up over eager dense; "
                                       "runtime/ort > 1 means slimkit's runtime is faster than ONNX Runtime dense")
    with_base = any(r["columns"]["ort baseline"]["median_ms"] for r in result["rows"])
    with_ds = any(r["columns"]["deepsparse"]["median_ms"] for r in result["rows"])
    columns = [c for c in COLUMNS if (c != "ort baseline" or with_base) and (c != "deepsparse" or with_ds)]
    for col in ("model", "threads", "batch", *columns, "runtime/ort", *(("ort baseline/ort",) if with_base else ()),
                *(("runtime/deepsparse",) if with_ds else ())):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result["rows"]:
        cells = []
        for name in columns:
            c = r["columns"][name]
            cells.append("-" if c["median_ms"] is None else
                         f"{c['median_ms']:.3f} ({c['iqr_ms']:.3f}) {c['speedup_vs_eager']:.2f}x")
        ratios = ([r["runtime_vs_ort"]] + ([r["ort_vs_ort_baseline"]] if with_base else [])
                  + ([r.get("runtime_vs_deepsparse")] if with_ds else []))
        table.add_row(f"{r['model']} ({r['sparsity']:.0%} sparse)", str(r["threads"]), str(r["batch"]), *cells,
                      *("-" if v is None else f"{v:.2f}" for v in ratios))
    console.width = max(console.width, 190)
    console.print(table)
    notes = {(r["model"], name, c["note"]) for r in result["rows"] for name, c in r["columns"].items()
             if c["note"] and name in ("ort dense", "ort baseline", "deepsparse")}
    for model, name, note in sorted(notes):
        console.print(f"{model} {name}: {note}", markup=False)
    for r in result["rows"]:
        console.print(f"{r['model']} threads {r['threads']} batch {r['batch']}: runtime backend "
                      f"{r['columns']['runtime']['note']}, runtime dense backend {r['columns']['runtime dense']['note']}",
                      markup=False)
