"""``slimkit run MODEL.slim``: run a .slim model through the runtime, to time it or to predict.

Without ``--input`` it benchmarks: the runtime model and the eager model (the module
as loaded, one Python call per layer) are timed side by side, interleaved, ``--runs``
samples each after ``--warmup`` calls, on a fixed random batch of ``--batch`` examples
with ``--threads`` intra-op threads; it reports medians, interquartile ranges, the
speed-up, the backend the runtime chose (and the timings that chose it) and how many
layers run slimkit's sparse kernels. With ``--input FILE.npy`` (an array of
``(N, *input_shape)`` or one example of ``input_shape``) it predicts: prints the class
of each row and, with ``--out FILE.npy``, saves the outputs (written atomically).
"""
from __future__ import annotations

import io
import statistics
from pathlib import Path

import torch

from slimkit.errors import UserError

__all__ = ["run_command"]


def _check_options(batch: int, threads: int, runs: int, warmup: int, backend: str) -> None:
    from slimkit.runtime.backends import BACKENDS

    for flag, value, low in (("--batch", batch, 1), ("--threads", threads, 1), ("--runs", runs, 1),
                             ("--warmup", warmup, 0)):
        if value < low:
            raise UserError(f"{flag} {value} is invalid: expected an integer >= {low}")
    if backend != "auto" and backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is invalid: expected auto, {', '.join(BACKENDS)}")


def _read_input(path: Path, shape: list) -> torch.Tensor:
    import numpy as np

    if not path.is_file():
        raise UserError(f"--input {path} does not exist or is not a file; give a .npy array")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"--input {path} is not a readable .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise UserError(f"--input {path} holds {getattr(array, 'dtype', type(array).__name__)}; expected numbers")
    if list(array.shape) == shape:
        array = array[None]
    if list(array.shape[1:]) != shape or array.shape[0] < 1:
        raise UserError(f"--input {path} has shape {list(array.shape)}; this model takes (N, "
                        f"{', '.join(map(str, shape))}) or one example {shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _save_output(path: Path, y: torch.Tensor) -> int:
    import numpy as np

    from slimkit import atomic

    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a .npy file name")
    buffer = io.BytesIO()
    np.save(buffer, y.numpy())
    return atomic.write_bytes(path, buffer.getvalue())


def _stats(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_ms": statistics.median(samples), "iqr_ms": q[2] - q[0], "min_ms": min(samples)}


def _benchmark(rm, batch: int, runs: int, warmup: int) -> dict:
    from slimkit.bench.timing import interleaved_times
    from slimkit.nn import eval_mode
    from slimkit.runtime.capture import example_input

    x = example_input(rm.input_shape, batch)
    info = rm.prepare(batch)
    eager = rm._eager
    with torch.no_grad(), eval_mode(eager):
        samples = interleaved_times({"runtime": lambda: rm(x), "eager": lambda: eager(x)}, warmup=max(warmup, 1),
                                    repeats=runs)
    result = {name: _stats(s) for name, s in samples.items()}
    result["speedup_vs_eager"] = result["eager"]["median_ms"] / result["runtime"]["median_ms"]
    return {"mode": "benchmark", "batch": batch, "threads": torch.get_num_threads(), "runs": runs, "warmup": warmup,
            "timing": result, "runtime": info, "folded_batchnorms": rm.folded_batchnorms}


def run_command(model_file: Path, *, batch: int, threads: int, runs: int, warmup: int, input_file: Path | None,
                out_file: Path | None, backend: str) -> dict:
    """Load ``model_file`` into the runtime, then benchmark it or predict ``input_file``; returns the result."""
    from slimkit import runtime

    _check_options(batch, threads, runs, warmup, backend)
    if out_file is not None and input_file is None:
        raise UserError("--out saves predictions: give --input FILE.npy too")
    torch.set_num_threads(threads)
    rm = runtime.load(model_file, backend=backend)
    if input_file is None:
        return {"model": str(model_file), **_benchmark(rm, batch, runs, warmup)}
    x = _read_input(Path(input_file), rm.input_shape)
    with torch.no_grad():
        y = torch.cat([rm(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
    result = {"model": str(model_file), "mode": "predict", "rows": int(x.shape[0]),
              "classes": y.argmax(dim=1).tolist() if y.dim() == 2 else None,
              "backend": [s["backend"] for s in rm.report()["shapes"]]}
    if out_file is not None:
        result["out"], result["bytes"] = str(out_file), _save_output(Path(out_file), y)
    result["outputs"] = y.tolist()
    return result


def print_result(result: dict, console) -> None:
    """The human-readable form of :func:`run_command`'s result."""
    if result["mode"] == "predict":
        for i, c in enumerate(result["classes"] or []):
            console.print(f"row {i}: class {c}", markup=False)
        if result["classes"] is None:
            for i, row in enumerate(result["outputs"]):
                console.print(f"row {i}: {row}", markup=False)
        if result.get("out"):
            console.print(f"wrote {result['out']} ({result['bytes']:,} bytes)", markup=False)
        return
    t, info = result["timing"], result["runtime"]
    layers = info["layers"]
    sparse = sum(entry["path"] == "sparse kernel" for entry in layers)
    console.print(f"{result['model']}: batch {result['batch']}, {result['threads']} thread(s), "
                  f"{result['runs']} interleaved runs after {result['warmup']} warm-up", markup=False)
    for name in ("runtime", "eager"):
        s = t[name]
        console.print(f"  {name:<8} median {s['median_ms']:.3f} ms (IQR {s['iqr_ms']:.3f}, min {s['min_ms']:.3f})",
                      markup=False)
    choice = info["choice"]
    how = "recorded earlier on this machine" if choice.get("cached") else (
        ", ".join(f"{k} {v:.3f} ms" for k, v in choice["median_ms"].items()) or "the only candidate")
    console.print(f"  runtime / eager: {t['speedup_vs_eager']:.2f}x faster; backend {info['backend']} ({how}); "
                  f"{result['folded_batchnorms']} BatchNorm folded; {sparse} of {len(layers)} CSR layers on "
                  "slimkit's sparse kernels", markup=False)
    for name, why in choice.get("rejected", {}).items():
        console.print(f"  rejected {name}: {why}", markup=False)
