"""Which kernel each sparse-capable layer of a model runs at a given batch size, and why.

``slimkit info`` shows it per layer and per batch size. The answer follows the rules
of :func:`slimkit.ops.conv.sparse_conv2d` and :func:`slimkit.ops.linear.sparse_linear`
for inference (no autograd), in the order they test them, with their constants:

1. the CSR weight's sparsity must reach its ``min_sparsity`` (``CSRWeight.uses_sparse``);
2. a linear call needs at least :data:`~slimkit.ops.linear.SPARSE_LINEAR_MIN_MACS` dense
   multiply-accumulates (batch x in x out), a conv output plane at least
   :data:`~slimkit.ops.conv.SPARSE_MIN_POSITIONS` positions;
3. float32/float64 only, and the native kernel must be there for the device (the
   reference backend, ``SLIMKIT_KERNELS=reference``, runs no native kernel).

A pruned Conv2d/Linear that is not converted (a model saved without
``--sparse-inference``) runs the dense op; its row also says what it would run once
converted, from the CSR weight ``--sparse-inference`` would build.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimkit.models import count_macs
from slimkit.nn import effective_weight
from slimkit.nn.sparse import CSRLayer, kept_as_is

#: Batch sizes ``slimkit info`` always reports (plus the one given to ``--batch-size``).
REPORTED_BATCH_SIZES = (1, 64)


def _ops():
    """The sparse ops' modules (imported here: they load the kernel backend)."""
    from slimkit.ops import conv, linear

    return conv, linear


def is_sparse_layer(module: nn.Module) -> bool:
    """A CSR inference layer (made by ``--sparse-inference``)."""
    return isinstance(module, CSRLayer)


def is_sparse_capable(module: nn.Module) -> bool:
    """A CSR inference layer, or a Conv2d/Linear that ``--sparse-inference`` converts."""
    if is_sparse_layer(module):
        return True
    return isinstance(module, (nn.Conv2d, nn.Linear)) and kept_as_is(module) is None


def _csr_weight(module: nn.Module):
    """The CSR weight the layer holds, or the one ``--sparse-inference`` would build for it."""
    conv, linear = _ops()
    if is_sparse_layer(module):
        return module.sparse_weight
    weight = effective_weight(module).detach()
    cls = conv.SparseConvWeight if isinstance(module, nn.Conv2d) else linear.SparseLinearWeight
    return cls.from_dense(weight)


def _native(op: str, dtype: torch.dtype) -> tuple[bool, str]:
    from slimkit.ops import backend

    if dtype not in (torch.float32, torch.float64):
        return False, f"{str(dtype).replace('torch.', '')} weights: the sparse kernels take float32/float64"
    if backend.use_native(torch.empty(0), op):
        return True, ""
    return False, f"no native kernel: {backend.backend_name()}"


def kernel_choice(module: nn.Module, example_macs: int, batch: int, sparse_weight=None) -> dict:
    """``{"kernel": "sparse" | "dense", "reason": ...}`` for one call of ``module`` at ``batch``
    (``example_macs``: its dense multiply-accumulates for one example, from ``count_macs``).
    For a layer not converted to CSR the kernel is "dense" and ``"converted"`` holds the
    choice it would make once converted (``sparse_weight``: the CSR weight, if already built)."""
    conv, linear = _ops()
    sw = sparse_weight if sparse_weight is not None else _csr_weight(module)
    is_conv = isinstance(sw, conv.SparseConvWeight)
    # a conv's MACs per example are output positions x weight elements; a linear call's MACs
    # (what sparse_linear compares with its floor) are batch x the per-example ones
    positions, call_macs = example_macs // max(math.prod(sw.shape), 1), batch * example_macs
    dense_op = "dense conv2d" if is_conv else "dense F.linear"
    work = positions if is_conv else call_macs
    ok, why = sw.runs_sparse(work), sw.kernel_reason(work)  # the op's own decision, not a copy of it
    if ok:
        ok, why_not = _native("slimkit::sparse_conv2d" if is_conv else "slimkit::sparse_linear", sw.values.dtype)
        why = why if ok else why_not
    choice = {"kernel": "sparse" if ok else "dense",
              "reason": f"{why}: {'sparse_conv2d' if is_conv else 'sparse_linear'}" if ok else f"{why}: {dense_op}"}
    if is_sparse_layer(module):
        return choice
    return {"kernel": "dense", "reason": f"{type(module).__name__}, not converted to CSR: {dense_op}",
            "converted": choice}


def kernel_plan(model: nn.Module, input_shape, batch_sizes=REPORTED_BATCH_SIZES, macs: dict | None = None
                ) -> dict[str, dict]:
    """Layer name -> ``{"batch B": kernel_choice(...)}`` for every sparse-capable layer that
    the forward pass reaches (``macs``: ``count_macs(model, input_shape, layers=True)``)."""
    macs = macs or count_macs(model, input_shape, layers=True)
    plan = {}
    for name, module in model.named_modules():
        if name in macs["layers"] and is_sparse_capable(module):
            sw = _csr_weight(module)  # built once per layer, not per batch size
            plan[name] = {f"batch {b}": kernel_choice(module, macs["layers"][name]["dense"], b, sw)
                          for b in batch_sizes}
    return plan
