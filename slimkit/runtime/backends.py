"""The dense backends the runtime can run a lowered graph with, each built for one example input.

* ``jit``: ``torch.jit.trace`` of the graph, ``torch.jit.freeze`` (weights become
  constants) and ``torch.jit.optimize_for_inference`` (oneDNN convolutions with their
  ReLU fused, BatchNorm folding, dropout removal). One C++ interpreter call per forward.
* ``freeze``: the same trace, frozen, without ``optimize_for_inference``: convolutions stay
  ATen ops on plain tensors. On a graph whose convolutions mostly run slimkit's kernels,
  the layout conversions that oneDNN needs around its few dense layers (``to_mkldnn`` /
  ``to_dense``) can cost more than oneDNN saves; the measurement decides.
* ``compile``: ``torch.compile`` (Inductor) with ``freezing`` on (constant weights,
  oneDNN weight pre-packing and conv/linear + activation fusion), static shapes.
* ``eager``: the lowered fx graph run by Python, one op call per node.

slimkit's kernels are ordinary dispatcher ops (``torch.ops.slimkit.*``), so all three
run them inside the graph. :func:`build` returns a callable or raises; the caller
(:mod:`slimkit.runtime.select`) checks its outputs and times it against the others.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.fx as fx

__all__ = ["BACKENDS", "build"]

BACKENDS = ("jit", "freeze", "compile", "eager")


def _jit(gm: fx.GraphModule, example: torch.Tensor, optimize: bool = True) -> Callable:
    with warnings.catch_warnings():
        # torch >= 2.10 marks torch.jit deprecated in favour of torch.export; it is still the
        # fastest frozen CPU path measured here, and only one candidate among three
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(gm, (example,), check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
            return torch.jit.optimize_for_inference(frozen) if optimize else frozen


def _compile(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(gm, dynamic=False, fullgraph=True)
        compiled(example)  # compiles now, with freezing on; later calls of this shape reuse it
    return compiled


def _eager(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    return gm


def _freeze(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    return _jit(gm, example, optimize=False)


_BUILDERS = {"jit": _jit, "freeze": _freeze, "compile": _compile, "eager": _eager}


def build(name: str, gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    """The callable that runs ``gm`` with backend ``name``, built (and traced) on ``example``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown runtime backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return _BUILDERS[name](gm, example)
