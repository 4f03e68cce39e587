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
* ``onnxruntime``: the graph exported to ONNX in memory (TorchScript exporter, this shape)
  and run by an ONNX Runtime session with as many intra-op threads as torch uses. Only
  graphs of standard ops export: a graph that calls slimkit's sparse kernels is rejected
  here and runs in one of the others. Measured on filter-pruned resnet56 / mobilenetv2 at
  batch 1 (1 thread), ONNX Runtime ran the dense graph 1.5-2x faster than frozen
  TorchScript (docs/BENCHMARKS.md, issue 11 part C), so a structured-pruned model deployed
  through slimkit gets that engine's speed. Used when ``onnxruntime`` is installed (the
  ``export`` extra); otherwise it is one rejected candidate.
* ``eager``: the lowered fx graph run by Python, one op call per node.

slimkit's kernels are ordinary dispatcher ops (``torch.ops.slimkit.*``), so ``jit``,
``freeze``, ``compile`` and ``eager`` run them inside the graph. :func:`build` returns a callable or raises; the caller
(:mod:`slimkit.runtime.select`) checks its outputs and times it against the others.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.fx as fx

__all__ = ["BACKENDS", "build"]

BACKENDS = ("jit", "freeze", "compile", "onnxruntime", "eager")


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


def _onnxruntime(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    import io

    import onnxruntime  # noqa: F401 -- ImportError: this candidate is rejected, the others remain

    if any(n.op == "call_function" and str(getattr(n.target, "namespace", "")) == "slimkit" for n in gm.graph.nodes):
        raise NotImplementedError("the graph calls slimkit's sparse kernels, which ONNX Runtime does not have")
    from slimkit.export import ort_session, torchscript_onnx

    buffer = io.BytesIO()
    torchscript_onnx(gm, example, buffer)
    session = ort_session(buffer.getvalue(), torch.get_num_threads())
    run = session.run

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run(None, {"input": x.detach().contiguous().numpy()})[0])

    return forward


def _eager(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    return gm


def _freeze(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    return _jit(gm, example, optimize=False)


_BUILDERS = {"jit": _jit, "freeze": _freeze, "compile": _compile, "onnxruntime": _onnxruntime, "eager": _eager}


def build(name: str, gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    """The callable that runs ``gm`` with backend ``name``, built (and traced) on ``example``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown runtime backend {name!r}: expected one of {', '.join(BACKENDS)}")
    return _BUILDERS[name](gm, example)
