"""Sparse fully connected op for inference: ``sparse_linear`` over a :class:`SparseLinearWeight`.

``sparse_linear(input, SparseLinearWeight, bias)`` is ``F.linear(input, dense(weight), bias)``
with the weight in CSR over out_features x in_features (csrc/cpu/sparse_linear.cpp,
csrc/cuda/sparse_linear*): at batch sizes under 8 a sparse dot product per output unit
that gathers the inputs of its nonzeros (vectorised gathers), from 8 on the batch as the
vector dimension, with the register-tiled inner loop of :func:`slimkit.ops.sparse_conv2d`
(a 1x1 convolution over the batch). Dense ``F.linear`` reads every zero of a pruned
weight; this reads nnz x (value + index). Below the sparsity where that stops paying
(:data:`SPARSE_LINEAR_MIN_SPARSITY`, measured) a :class:`SparseLinearWeight` runs
``F.linear`` on the dense weight instead, and says so in ``.uses_sparse`` and ``.reason``.

The native kernel runs when :mod:`slimkit.ops.backend` has it for the input's device,
the dense reference otherwise (same results).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from slimkit.ops import backend
from slimkit.ops.csr import CSRWeight

__all__ = ["SPARSE_LINEAR_MIN_SPARSITY", "SPARSE_LINEAR_MIN_MACS", "SparseLinearWeight", "sparse_linear",
           "sparse_linear_reference", "sparse_mlp_reference"]

#: Sparsity from which ``sparse_linear`` runs the sparse kernel instead of dense ``F.linear``.
#: Measured on the development machine (AMD EPYC Zen 4, fp32, 784->300, interleaved medians;
#: time of F.linear / sparse_linear)::
#:
#:     threads  batch   70 %   90 %   95 %
#:     1        1       0.68   1.37   1.84
#:     1        8       0.49   1.38   2.32
#:     1        64      1.21   3.01   4.57
#:     2        1       0.99   1.67   1.84
#:     2        8       0.45   1.10   1.69
#:     2        64      0.90   1.72   2.21
#:
#: Batch 1 and 8 tie with dense near 85 %, so that is the default; under it the dense path runs.
SPARSE_LINEAR_MIN_SPARSITY = 0.85
#: Dense multiply-accumulates (batch x out x in) under which a call runs dense ``F.linear``
#: whatever the sparsity: a custom op's call costs a few microseconds, as much as the whole
#: dense product of a small layer. Measured at 90 % sparsity, 1 thread (F.linear time /
#: sparse_linear time): 100->10 at batch 1 0.77x, 300->100 at batch 1 0.84x and batch 4
#: 0.82x (120 K MACs), 784->300 at batch 1 1.15x (235 K), 256->64 at batch 16 1.03x (262 K),
#: 300->100 at batch 16 1.20x (480 K).
SPARSE_LINEAR_MIN_MACS = 200_000


class SparseLinearWeight(CSRWeight):
    """A fully connected weight (out_features, in_features) in CSR, for :func:`sparse_linear`.

    ``row_ptr`` (out+1) and ``col_idx`` (nnz) are int32 or int64, ``values`` (nnz) float.
    ``uses_sparse`` says whether :func:`sparse_linear` runs the sparse kernel (sparsity >=
    ``min_sparsity``, default :data:`SPARSE_LINEAR_MIN_SPARSITY`) or dense ``F.linear``.
    """

    rank = 2
    shape_doc = "(out_features, in_features)"
    min_work = SPARSE_LINEAR_MIN_MACS
    work_unit = "MACs per call"
    kernel_doc = "sparse linear kernel"
    dense_doc = "dense F.linear"

    def call_floor_note(self) -> str:
        min_batch = -(-SPARSE_LINEAR_MIN_MACS // (self.shape[0] * self.shape[1]))  # smallest batch run sparse
        if min_batch <= 1:
            return ""
        return (f"; calls with batch < {min_batch} run dense F.linear (under {SPARSE_LINEAR_MIN_MACS:,} MACs "
                "the kernel call costs more than it saves)")

    @classmethod
    def default_min_sparsity(cls, shape) -> float:
        return SPARSE_LINEAR_MIN_SPARSITY


_registered = False


def _register_native():
    global _registered
    if _registered:
        return

    @torch.library.register_fake("slimkit::sparse_linear")
    def _(input, row_ptr, col_idx, values, weight_shape, bias):
        return input.new_empty((input.shape[0], weight_shape[0]))

    @torch.library.register_fake("slimkit::sparse_mlp")
    def _mlp(input, row_ptrs, col_idxs, values, dense_weights, shapes, biases, relus):
        return input.new_empty((input.shape[0], shapes[-2]))

    _registered = True


backend.on_load(_register_native)


@backend.constant_under_compile
def _native_when_compiling(device_type: str) -> bool:
    return backend.use_native(torch.empty(0, device=device_type), "slimkit::sparse_linear")


def _native(x: torch.Tensor) -> bool:
    if x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.compiler.is_compiling():
        return _native_when_compiling(x.device.type)
    return backend.use_native(x, "slimkit::sparse_linear")


def sparse_linear_reference(input, sparse_weight: SparseLinearWeight, bias=None):
    return F.linear(input, sparse_weight.to_dense(), bias)


def sparse_linear(input, sparse_weight: SparseLinearWeight, bias=None):
    """``F.linear(input, dense(sparse_weight), bias)`` for inference; input (*, in_features).

    Runs the sparse kernel when ``sparse_weight.uses_sparse``, the call has at least
    :data:`SPARSE_LINEAR_MIN_MACS` dense multiply-accumulates and the native kernels are
    available for the input's device (on a GPU only under ``SLIMKIT_SPARSE_CUDA=1``: cuBLAS
    on the dense weight was faster there), else ``F.linear`` on the (cached) dense weight. When
    autograd needs a gradient through the call, the differentiable dense path is taken:
    the sparse kernel has no backward.
    """
    if not isinstance(sparse_weight, SparseLinearWeight):
        raise TypeError(f"sparse_linear expects a SparseLinearWeight, got {type(sparse_weight).__name__} "
                        "(build one with SparseLinearWeight.from_dense(weight))")
    if (input.dim() == 0 or input.dtype != sparse_weight.values.dtype
            or not sparse_weight.runs_sparse(input.numel() * sparse_weight.shape[0])
            or (torch.is_grad_enabled() and (input.requires_grad or (bias is not None and bias.requires_grad)))
            or not backend.sparse_kernels_on(input) or not _native(input)):
        return sparse_linear_reference(input, sparse_weight, bias)
    w = sparse_weight
    x = input.reshape(-1, input.shape[-1]) if input.dim() != 2 else input
    y = torch.ops.slimkit.sparse_linear.default(x.contiguous(), w.row_ptr, w.col_idx, w.values, w.shape_list, bias)
    return y if input.dim() == 2 else y.reshape(*input.shape[:-1], w.shape[0])


def sparse_mlp_reference(input, row_ptrs, col_idxs, values, dense_weights, shapes, biases, relus):
    """What ``torch.ops.slimkit.sparse_mlp`` computes, layer by layer in PyTorch: layer ``i`` is
    ``F.linear`` with ``dense_weights[i]`` or, when that is empty, with the CSR weight
    (``row_ptrs[i]``, ``col_idxs[i]``, ``values[i]``) of shape ``shapes[2i:2i+2]``, plus
    ``biases[i]`` unless empty, then ReLU where ``relus[i]``."""
    x = input
    for i, relu in enumerate(relus):
        out, k = shapes[2 * i], shapes[2 * i + 1]
        if dense_weights[i].numel() > 0:
            w = dense_weights[i]
        else:
            rows = torch.repeat_interleave(torch.arange(out), row_ptrs[i].long().diff())
            w = values[i].new_zeros(out, k)
            w[rows, col_idxs[i].long()] = values[i]
        x = F.linear(x, w, biases[i] if biases[i].numel() > 0 else None)
        if relu:
            x = torch.relu(x)
    return x
