"""Pick the fastest backend for a lowered graph on this machine, by measurement, and remember it.

Each candidate of :data:`slimkit.runtime.backends.BACKENDS` is built on the example
input, its output checked against the eager model's (a candidate that fails the check or
cannot be built is rejected, with the reason), and the survivors are timed side by side,
interleaved in rounds (:func:`slimkit.bench.timing.interleaved_times`); the one with the
lowest median wins. The choice, with every candidate's median and interquartile range,
is returned as a :class:`Choice` and recorded in ``$SLIMKIT_CACHE/runtime/choices.json``
under a key made of the machine (CPU model, torch version), the threads, the input shape
and the graph (its code and tensor shapes), so the next load on this machine skips the
measurement (``remeasure=True`` forces it).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.fx as fx

from slimkit.runtime.backends import BACKENDS, build

__all__ = ["Choice", "choose", "outputs_match", "machine", "RTOL"]

#: Outputs must satisfy |got - want| <= RTOL * (|want| + max |want|): float32 tolerance
#: relative to the output's scale (folding BatchNorm and oneDNN's blocked convolutions
#: round differently from eager, by a few ulps per layer).
RTOL = 1e-4


@dataclass
class Choice:
    backend: str
    shape: list
    threads: int
    machine: str
    median_ms: dict = field(default_factory=dict)
    iqr_ms: dict = field(default_factory=dict)
    rejected: dict = field(default_factory=dict)
    cached: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def outputs_match(got, want, rtol: float = RTOL) -> tuple[bool, float]:
    """(ok, max |got - want| / (max |want|)) with the tolerance of :data:`RTOL`."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False, float("inf")
    got, want = got.double(), want.double()
    scale = float(want.abs().max()) if want.numel() else 0.0
    diff = (got - want).abs()
    ok = bool((diff <= rtol * (want.abs() + scale)).all())
    return ok, (float(diff.max()) / scale if scale else float(diff.max()) if diff.numel() else 0.0)


def machine() -> str:
    """CPU model and torch version: what decides which backend is fastest."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}; torch {torch.__version__}"


def _cache_file() -> Path:
    root = Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))
    return root / "runtime" / "choices.json"


def _key(gm: fx.GraphModule, shape, threads: int, candidates) -> str:
    h = hashlib.sha256(gm.code.encode())
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
    return f"{machine()}|threads={threads}|shape={list(shape)}|{','.join(candidates)}|{h.hexdigest()[:16]}"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _record(key: str, choice: Choice) -> None:
    from slimkit import atomic
    from slimkit.errors import UserError

    data = _read_cache()
    data[key] = choice.as_dict()
    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(_cache_file(), json.dumps(data, indent=1, sort_keys=True))
    except (OSError, UserError):
        pass  # a read-only cache only costs a measurement next time


def _iqr(samples) -> float:
    if len(samples) < 2:
        return 0.0
    q = statistics.quantiles(samples, n=4)
    return q[2] - q[0]


def _timed(fn: Callable, x: torch.Tensor, calls: int) -> Callable:
    def run():
        for _ in range(calls):
            fn(x)
    return run


def choose(gm: fx.GraphModule, example: torch.Tensor, reference: torch.Tensor, candidates=BACKENDS, *,
           rounds: int = 7, remeasure: bool = False) -> tuple[Callable, Choice]:
    """Build the candidates on ``example``, keep those matching ``reference``, return the fastest and the record."""
    from slimkit.bench.timing import interleaved_times

    candidates = [c for c in candidates if c in BACKENDS]
    if not candidates:
        raise ValueError(f"no runtime backend among the candidates; expected some of {', '.join(BACKENDS)}")
    threads = torch.get_num_threads()
    shape = list(example.shape)
    key = _key(gm, shape, threads, candidates)
    choice = Choice(backend="", shape=shape, threads=threads, machine=machine())
    cached = None if (remeasure or len(candidates) == 1) else _read_cache().get(key)
    if isinstance(cached, dict) and cached.get("backend") in candidates:
        candidates = [cached["backend"]]
    built: dict[str, Callable] = {}
    for name in candidates:
        try:
            fn = build(name, gm, example)
            with torch.no_grad():
                out = fn(example)
        except Exception as exc:  # a backend that cannot take this graph is one rejected candidate
            choice.rejected[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            continue
        ok, err = outputs_match(out, reference)
        if not ok:
            choice.rejected[name] = f"output differs from eager (max relative error {err:.3g} > {RTOL:g})"
            continue
        built[name] = fn
    if not built:
        raise RuntimeError("runtime: no backend could run the model: "
                           + "; ".join(f"{k}: {v}" for k, v in choice.rejected.items()))
    if isinstance(cached, dict) and cached.get("backend") in built:
        restored = Choice(**{k: cached[k] for k in Choice.__dataclass_fields__ if k in cached})
        restored.cached = True
        return built[restored.backend], restored
    if len(built) > 1:
        with torch.no_grad():
            probe = interleaved_times({n: (lambda f=f: f(example)) for n, f in built.items()}, warmup=2, repeats=3)
            per_call = min(min(s) for s in probe.values())
            calls = max(1, int(2.0 / max(per_call, 1e-3)))  # samples of >= ~2 ms, above timer noise
            samples = interleaved_times({n: _timed(f, example, calls) for n, f in built.items()}, warmup=1,
                                        repeats=rounds)
        for name, s in samples.items():
            per = [v / calls for v in s]
            choice.median_ms[name] = statistics.median(per)
            choice.iqr_ms[name] = _iqr(per)
        choice.backend = min(choice.median_ms, key=choice.median_ms.get)
        _record(key, choice)
    else:
        choice.backend = next(iter(built))
    return built[choice.backend], choice
