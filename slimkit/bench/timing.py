"""Timing and memory measurement for the kernel benchmarks.

* Time: every implementation of a case is timed side by side in one process,
  interleaved (in rounds, in an order shuffled each round) after warm-up, and the
  median is reported, so that load from other processes hits all of them alike.
* Memory: peak *extra* tensor memory of one call, from the allocation events that
  c10's CPU (and CUDA) allocator reports to the PyTorch profiler
  (``profile_memory=True``): every tensor storage allocated or freed during the call,
  in order, summed; the peak of that running sum over the call is the most memory
  the call held beyond what existed before it (inputs are not counted, the outputs
  and gradients it creates are). tracemalloc cannot see tensor storage (it is not
  Python's heap) and process RSS counts allocator caching and page reuse, not what
  the op needed. The profiler adds overhead, so memory is measured in a separate
  call, never in a timed one.
* Bandwidth: a large tensor copy (read + write) gives the machine's practical
  memory bandwidth in the same run; a case's achieved GB/s is its minimum memory
  traffic (each input read once per pass, each output written once) over its
  median time, reported against that copy.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Any, Callable, Iterator

import torch

__all__ = ["interleaved_times", "peak_extra_bytes", "memcpy_bandwidth_gbps", "bench_case", "IMPLS"]

#: Implementation names, in the order rows are reported.
IMPLS = ("native", "eager", "compile")


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5) -> dict[str, list[float]]:
    """Wall-clock milliseconds of each callable, ``repeats`` samples each after ``warmup`` calls,
    taken in rounds that run every callable once, in an order shuffled every round (fixed
    seed). A callable's time depends on what ran just before it (caches, freed buffers that
    the next large allocation must fault in again); with a rotating order each one would
    always follow the same neighbour, and that bias would land on one side of the comparison."""
    import random

    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        order = names[:]
        shuffle(order)
        for name in order:
            _sync()
            t0 = time.perf_counter()
            fns[name]()
            _sync()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line to it when a profile starts and stops)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_bytes(fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> int:
    """Peak tensor memory allocated by one call of ``fn`` beyond what existed before it (bytes).

    ``before`` runs first, outside the measurement (e.g. to drop the gradients of a previous
    call, whose release would otherwise count as negative memory inside the call).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    if before is not None:
        before()
    _sync()
    prof = profile(activities=activities, profile_memory=True)
    with _quiet_fd2():
        prof.__enter__()
    try:
        fn()
        _sync()
    finally:
        with _quiet_fd2():
            prof.__exit__(None, None, None)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def memcpy_bandwidth_gbps(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Median copy bandwidth of a ``nbytes`` float32 tensor into another, counting read + write (GB/s)."""
    n = nbytes // 4
    src = torch.ones(n)
    dst = torch.empty(n)
    dst.copy_(src)  # fault the pages in
    samples = interleaved_times({"copy": lambda: dst.copy_(src)}, warmup=1, repeats=repeats)["copy"]
    return 2 * n * 4 / (statistics.median(samples) / 1e3) / 1e9


def bench_case(op: str, shape: str, fns: dict[str, Callable[[], Any] | None], *, bytes_moved: int | None,
               warmup: int, repeats: int, target_eager: float | None = None, target_compile: float | None = None,
               max_native_bytes: int | None = None, notes: dict[str, str] | None = None,
               reset: Callable[[], Any] | None = None) -> list[dict]:
    """Time (and measure memory of) one case's implementations and build its report rows.

    ``fns`` maps an implementation name ("native", "eager", "compile") to a callable running
    one forward + backward, or to None when it is unavailable (the row says why, from
    ``notes``). The native row gets the targets: at least ``target_eager`` x eager and
    ``target_compile`` x torch.compile, and at most ``max_native_bytes`` peak extra memory.
    ``reset`` runs before each memory measurement (e.g. to drop gradients).
    """
    notes = dict(notes or {})
    runnable = {name: fn for name, fn in fns.items() if fn is not None}
    samples = interleaved_times(runnable, warmup=warmup, repeats=repeats) if runnable else {}
    medians = {name: statistics.median(s) for name, s in samples.items()}
    rows = []
    for name in [n for n in IMPLS if n in fns] + [n for n in fns if n not in IMPLS]:
        fn = fns[name]
        row: dict[str, Any] = {"op": op, "shape": shape, "impl": name, "median_ms": None, "min_ms": None,
                               "repeats": repeats, "peak_extra_mb": None, "bytes": bytes_moved,
                               "speedup_vs_eager": None, "speedup_vs_compile": None, "target": None,
                               "target_met": None, "note": notes.get(name, "")}
        if fn is not None:
            row["median_ms"] = medians[name]
            row["min_ms"] = min(samples[name])
            row["peak_extra_mb"] = peak_extra_bytes(fn, before=reset) / 2**20
            if "eager" in medians:
                row["speedup_vs_eager"] = medians["eager"] / medians[name]
            if "compile" in medians:
                row["speedup_vs_compile"] = medians["compile"] / medians[name]
        if name == "native":
            parts, met = [], True
            if target_eager is not None:
                parts.append(f">={target_eager:g}x eager")
                met = met and row["speedup_vs_eager"] is not None and row["speedup_vs_eager"] >= target_eager
            if target_compile is not None:
                parts.append(f">={target_compile:g}x compile")
                met = met and row["speedup_vs_compile"] is not None and row["speedup_vs_compile"] >= target_compile
            if max_native_bytes is not None:
                parts.append(f"peak <= {max_native_bytes / 2**20:.1f} MB (O(N))")
                met = met and row["peak_extra_mb"] is not None and row["peak_extra_mb"] * 2**20 <= max_native_bytes
            if parts:
                row["target"] = ", ".join(parts)
                row["target_met"] = bool(met) if fn is not None else False
        rows.append(row)
    return rows
