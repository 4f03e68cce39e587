"""Kernel benchmarks: slimkit's native kernels against eager PyTorch and torch.compile.

``slimkit bench kernels`` and ``python benchmarks/kernels.py`` call
:func:`kernels_command`. It runs the benchmark modules ``slimkit.bench.kd``,
``slimkit.bench.gmm``, ``slimkit.bench.conv`` and ``slimkit.bench.linear`` (when present); each exposes
``run(quick: bool) -> list[dict]`` returning one row per (case, implementation)::

    {"op": "kd_loss", "shape": "4096x1000", "impl": "native" | "eager" | "compile",
     "median_ms": float | None, "min_ms": float | None, "repeats": int,
     "peak_extra_mb": float | None,     # peak tensor memory of one call beyond its inputs
     "bytes": int | None,               # minimum memory traffic of one call
     "speedup_vs_eager": float | None, "speedup_vs_compile": float | None,
     "target": str | None, "target_met": bool | None, "note": str}

(:func:`slimkit.bench.timing.bench_case` builds such rows.) This module adds the
achieved bandwidth (``gbps`` = bytes / median, ``bw_frac`` = gbps / the memcpy
bandwidth measured in the same run) and prints a table, or JSON with ``as_json``.
How time and memory are measured: :mod:`slimkit.bench.timing`.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
from typing import Any

__all__ = ["kernels_command", "MODULES"]

#: Benchmark modules by short name; a missing one (not written yet) is skipped.
MODULES = {"kd": "slimkit.bench.kd", "gmm": "slimkit.bench.gmm", "conv": "slimkit.bench.conv",
           "linear": "slimkit.bench.linear"}


def _available_modules() -> dict[str, str]:
    return {name: mod for name, mod in MODULES.items() if importlib.util.find_spec(mod) is not None}


def _select(ops: list[str] | None) -> dict[str, str]:
    from slimkit.errors import UserError

    available = _available_modules()
    if not ops:
        return available
    aliases = {"kd_loss": "kd", "gmm_prior": "gmm", "masked_conv2d": "conv", "sparse_conv2d": "conv",
               "sparse_linear": "linear", "e2e": "linear"}
    chosen: dict[str, str] = {}
    for op in ops:
        name = aliases.get(op, op)
        if name not in available:
            valid = sorted(set(available) | {a for a, n in aliases.items() if n in available})
            raise UserError(f"unknown kernel benchmark {op!r}; choose from: {', '.join(valid)}")
        chosen[name] = available[name]
    return chosen


def _machine() -> dict[str, Any]:
    import torch

    from slimkit.ops import backend

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "backend": backend.backend_name(),
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1min"] = os.getloadavg()[0]  # other processes' load skews timings
    if backend.native_available() and hasattr(torch.ops.slimkit, "kd_gmm_cpu_isa"):
        info["kd_gmm_isa"] = torch.ops.slimkit.kd_gmm_cpu_isa()
    return info


def _fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _shape(row: dict) -> str:
    extra = [f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}"
             for k in ("batch", "sparsity") if row.get(k) is not None]
    return " ".join([str(row.get("shape", ""))] + extra)


def _speedup(row: dict) -> str:
    if row.get("speedup_vs_eager") is not None:
        return f"{row['speedup_vs_eager']:.1f}x"
    if row.get("speedup") is not None:  # a module's own baseline (conv: dense conv2d)
        return f"{row['speedup']:.2f}x"
    return "-"


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    title = (f"slimkit kernels - torch {m['torch']}, "
             + (f"{m['gpu']} (CUDA {m['cuda']}), " if "gpu" in m else f"{m['torch_threads']} threads, ")
             + f"{m['backend']}" + (f", {m['kd_gmm_isa']}" if "kd_gmm_isa" in m else "")
             + f"; {'device copy' if 'gpu' in m else 'memcpy'} {result['memcpy_gbps']:.1f} GB/s"
             + (f"; load avg {m['load_avg_1min']:.1f}" if "load_avg_1min" in m else ""))
    table = Table(title=title, caption="kd_loss, gmm_prior: forward + backward, speed-up vs eager; "
                                       "conv: speed-up vs dense conv2d; linear, end to end: vs the dense twin (see each module)")
    for col in ("op", "shape", "impl", "median ms", "peak extra MB", "speed-up", "vs compile", "GB/s",
                "% memcpy", "target", "met"):
        table.add_column(col, justify="left" if col in ("op", "shape", "impl", "target") else "right")
    for r in result["rows"]:
        met = r.get("target_met")
        table.add_row(
            str(r.get("op", "")), _shape(r), str(r.get("impl", "")),
            _fmt(r.get("median_ms"), ".2f", r.get("note") or "-"),
            _fmt(r.get("peak_extra_mb"), ".1f"),
            _speedup(r),
            _fmt(r.get("speedup_vs_compile"), ".1f") + ("x" if r.get("speedup_vs_compile") is not None else ""),
            _fmt(r.get("gbps"), ".1f"),
            _fmt(None if r.get("bw_frac") is None else 100 * r["bw_frac"], ".0f"),
            r.get("target") or "",
            "" if met is None else ("yes" if met else "NO"),
        )
    console = Console()
    console.width = max(console.width, 150)  # the table wraps badly in 80 columns (pipes, CI logs)
    console.print(table)
    if result.get("skipped"):
        console.print("skipped: " + "; ".join(result["skipped"]))


def kernels_command(ops: list[str] | None = None, as_json: bool = False, quick: bool = False,
                    device: str = "cpu") -> dict:
    """Run the kernel benchmarks, print a table (or JSON on stdout) and return the results.

    Args:
        ops: benchmark modules or ops to run ("kd", "gmm", "conv", "kd_loss", ...); all by default.
        as_json: print JSON instead of a table.
        quick: small shapes and no torch.compile: a smoke test, not a measurement (no targets).
        device: "cpu" (the modules above) or "cuda" (:mod:`slimkit.bench.cuda`: the CUDA kernels
            against cuDNN / cuBLAS / cuSPARSE and compiled standard formulations; ``ops`` then
            filters its rows by op name).

    Returns:
        ``{"machine": {...}, "memcpy_gbps": float, "quick": bool, "rows": [...], "skipped": [...]}``.
    """
    from slimkit.bench.timing import memcpy_bandwidth_gbps
    from slimkit.errors import UserError

    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device {device!r}; choose cpu or cuda")
    rows: list[dict] = []
    if device == "cuda":
        from slimkit.bench import cuda as cuda_bench

        cuda_rows = cuda_bench.run(quick=quick)  # refuses first when there is no GPU
        machine = _machine()
        import torch

        machine["gpu"] = torch.cuda.get_device_name(0)
        machine["cuda"] = torch.version.cuda
        bandwidth = cuda_bench.copy_bandwidth_gbps(64 << 20 if quick else 1 << 30)
        wanted = set(ops or [])
        produced = [(name, cuda_rows if not wanted else [r for r in cuda_rows if r["op"] in wanted])
                    for name in ("cuda",)]
        skipped = []
    else:
        chosen = _select(ops)
        machine = _machine()
        bandwidth = memcpy_bandwidth_gbps(64 << 20 if quick else 512 << 20)
        skipped = [f"{name} ({mod} not present)" for name, mod in MODULES.items()
                   if name not in chosen and not ops and importlib.util.find_spec(mod) is None]
        produced = ((name, importlib.import_module(mod).run(quick=quick)) for name, mod in chosen.items())
    for _name, module_rows in produced:
        for row in module_rows:
            if row.get("median_ms") is None and row.get("ms") is not None:
                row["median_ms"] = row["ms"]
            median, nbytes = row.get("median_ms"), row.get("bytes")
            if median and nbytes:
                row.setdefault("gbps", nbytes / (median / 1e3) / 1e9)
                row.setdefault("bw_frac", row["gbps"] / bandwidth)
            else:
                row.setdefault("gbps", None)
                row.setdefault("bw_frac", None)
            rows.append(row)
    result = {"machine": machine, "memcpy_gbps": bandwidth, "quick": quick, "device": device, "rows": rows,
              "skipped": skipped}
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(result)
    return result
