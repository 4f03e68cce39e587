"""slimkit's inference runtime: ``slimkit.load(path)`` gives a compiled, runnable model.

One job per module:

* :mod:`~slimkit.runtime.capture`: the whole model as one torch.fx graph (masked and
  quantized layers decoded to the weights they compute with, CSR layers kept as leaves);
* :mod:`~slimkit.runtime.fold`: BatchNorm folded into the preceding conv / linear (CSR too);
* :mod:`~slimkit.runtime.single_pixel`: convolutions on 1x1 feature maps as linear layers (exact);
* :mod:`~slimkit.runtime.lower`: per input shape, CSR layers become direct calls of
  ``torch.ops.slimkit.sparse_conv2d`` / ``sparse_linear`` (or plain dense layers where
  the kernel does not pay), ReLU in place on the kernel's output;
* :mod:`~slimkit.runtime.backends`: frozen TorchScript with or without
  ``optimize_for_inference`` (oneDNN), ``torch.compile`` with freezing, or the eager graph;
* :mod:`~slimkit.runtime.select`: the fastest backend on this machine, measured, checked
  against eager, recorded;
* :mod:`~slimkit.runtime.memory`: freed activations kept in the heap (glibc thresholds);
* :mod:`~slimkit.runtime.model`: :class:`RuntimeModel`, which ties them together;
* :mod:`~slimkit.runtime.run`: the ``slimkit run`` command (benchmark / predict);
* :mod:`~slimkit.runtime.engines`: which engine makes a model faster (``slimkit info``).

Unstructured sparsity is faster only here: ONNX Runtime (``slimkit export``) runs a
pruned model dense, because the exported file holds the decoded dense weights.
"""
from __future__ import annotations

from slimkit.runtime.backends import BACKENDS
from slimkit.runtime.model import RuntimeModel

__all__ = ["BACKENDS", "RuntimeModel", "load", "compile_model"]


def compile_model(model, input_shape=None, **kwargs) -> RuntimeModel:
    """A :class:`RuntimeModel` of an in-memory model (see its docstring for the options)."""
    return RuntimeModel(model, input_shape, **kwargs)


def load(path, **kwargs) -> RuntimeModel:
    """Load a ``.slim`` file as a :class:`RuntimeModel` (options: ``backend``, ``candidates``, ``remeasure``)."""
    from slimkit import storage
    from slimkit.errors import UserError
    from slimkit.plugins import get_registry

    loaded = storage.load_model(path, get_registry())
    shape = loaded.header.get("input_shape")
    if not shape:
        raise UserError(f"{path} records no input_shape; the runtime needs it to build its graph")
    return RuntimeModel(loaded.model, shape, **kwargs)
