"""RuntimeModel: a model captured once, BatchNorm folded, compiled per input shape.

``RuntimeModel(model, input_shape)`` captures ``model`` (:mod:`~slimkit.runtime.capture`)
and folds its BatchNorms (:mod:`~slimkit.runtime.fold`) once. The first call with a new
input shape (batch size included) lowers the graph for it (:mod:`~slimkit.runtime.lower`:
CSR layers become direct kernel calls or plain dense layers) and builds the backend
(:mod:`~slimkit.runtime.select`: the fastest of ``candidates`` on this machine, by
measurement, unless ``backend`` names one); later calls of that shape run the frozen or
compiled graph with no Python per layer. Every built graph is checked against the eager
model on the example batch before it is used. Building the first one raises malloc's
thresholds so that activations are not page-faulted in afresh on every call
(:mod:`~slimkit.runtime.memory`).
"""
from __future__ import annotations

import threading

import torch
import torch.nn as nn

from slimkit.runtime.backends import BACKENDS
from slimkit.runtime.capture import capture, example_input
from slimkit.runtime.fold import fold_batchnorm
from slimkit.runtime.lower import lower
from slimkit.runtime.memory import keep_freed_memory
from slimkit.runtime.select import choose

__all__ = ["RuntimeModel"]


class RuntimeModel:
    """A runnable compiled model (``y = runtime_model(x)``); see the module docstring.

    ``backend``: ``"auto"`` (measure ``candidates``, default all of
    :data:`~slimkit.runtime.backends.BACKENDS`) or one backend name. ``report()`` says
    what was folded, which layers run slimkit's kernels, and which backend was chosen
    for each shape, with the timings that chose it.
    """

    def __init__(self, model: nn.Module, input_shape=None, *, backend: str = "auto", candidates=None,
                 remeasure: bool = False):
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown runtime backend {backend!r}: expected auto or one of {', '.join(BACKENDS)}")
        self.candidates = tuple(candidates or BACKENDS) if backend == "auto" else (backend,)
        self.remeasure = remeasure
        self.input_shape = [int(s) for s in input_shape] if input_shape else None
        self._eager = model
        self.graph = capture(model)
        self.folded_batchnorms = fold_batchnorm(self.graph)
        self.memory = keep_freed_memory()
        self._built: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    @property
    def native(self) -> bool:
        from slimkit.ops import backend as ops_backend

        return ops_backend.native_available()

    def prepare(self, batch: int) -> dict:
        """Build (or reuse) the compiled graph for ``(batch, *input_shape)``; returns its report entry."""
        if not self.input_shape:
            raise ValueError("prepare() needs the model's input_shape")
        x = example_input(self.input_shape, batch)
        return self._entry(x)[1]

    def _entry(self, x: torch.Tensor) -> tuple:
        key = (tuple(x.shape), x.dtype, torch.get_num_threads())
        entry = self._built.get(key)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._built.get(key)
            if entry is None:
                entry = self._build(x)
                self._built[key] = entry
        return entry

    def _build(self, x: torch.Tensor) -> tuple:
        from slimkit.nn import eval_mode

        example = example_input(x.shape[1:], x.shape[0], dtype=x.dtype)
        lowered, plans = lower(self.graph, example, self.native)
        with torch.no_grad(), eval_mode(self._eager):
            reference = self._eager(example)
        fn, choice = choose(lowered, example, reference, self.candidates, remeasure=self.remeasure)
        info = {"shape": list(x.shape), "threads": torch.get_num_threads(), "backend": choice.backend,
                "choice": choice.as_dict(), "layers": [p.as_dict() for p in plans]}
        return fn, info

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The hot path is one dict look-up: a small model's whole forward takes ~45 us, and
        # the checks and a no_grad context cost ~15 us more. A shape seen before was checked then.
        entry = self._built.get((x.shape, x.dtype, torch.get_num_threads())) if isinstance(x, torch.Tensor) else None
        if entry is None:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                raise TypeError("RuntimeModel expects a floating-point tensor")
            if self.input_shape and list(x.shape[1:]) != self.input_shape:
                raise ValueError(f"input of shape {list(x.shape)}; this model takes (batch, "
                                 f"{', '.join(map(str, self.input_shape))})")
            with torch.no_grad():
                entry = self._entry(x)
        if torch.is_grad_enabled():
            with torch.no_grad():
                return entry[0](x)
        return entry[0](x)

    def report(self) -> dict:
        """What the runtime did: BatchNorms folded, and per built shape the backend and layer plans."""
        return {"folded_batchnorms": self.folded_batchnorms, "native_kernels": self.native, **self.memory,
                "input_shape": self.input_shape, "shapes": [e[1] for e in self._built.values()]}
