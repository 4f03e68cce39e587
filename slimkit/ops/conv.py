"""Masked convolution for pruning-aware training, sparse convolution for inference.

``masked_conv2d(input, weight, mask, ...)`` is ``conv2d(input, weight * mask, ...)``
whose weight gradient is zero wherever the mask is: the kernel (csrc/cpu/masked_conv.cpp,
csrc/cuda/masked_conv*.{cu,cpp}) runs ATen's dense convolution on the masked weight
and masks the weight gradient, so a training step costs a dense step plus three
elementwise passes over the (small) weight tensor.

``sparse_conv2d(input, SparseConvWeight, ...)`` is a direct sparse convolution (Park et
al., "Faster CNNs with Direct Sparse Convolutions and Guided Pruning", ICLR 2017) over a
CSR weight of out_channels x (in_channels*kh*kw): every nonzero adds value x (shifted
input plane) to its output plane, with no unfold and no sparse matmul
(csrc/cpu/sparse_conv*.cpp, csrc/cuda/sparse_conv*). Below the sparsity where the
direct kernel stops beating oneDNN's dense convolution (:func:`default_min_sparsity`:
70 %, 80 % for wide layers, measured) a ``SparseConvWeight`` runs ``conv2d`` on the dense
weight instead, and says so in ``.uses_sparse`` and ``.reason``.

Every op uses the native kernels when :mod:`slimkit.ops.backend` has them for the
input's device, and the pure-PyTorch reference otherwise (same results).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from slimkit.ops import backend
from slimkit.ops.csr import CSRWeight

__all__ = ["SPARSE_MIN_SPARSITY", "SPARSE_MIN_SPARSITY_WIDE", "WIDE_FAN_IN", "SPARSE_MIN_POSITIONS", "default_min_sparsity",
           "masked_conv2d", "masked_conv2d_reference", "sparse_conv2d", "sparse_conv2d_reference",
           "sparse_conv2d_relu_pool_reference", "SparseConvWeight", "as_pair", "resolve_padding"]

#: Sparsity (fraction of zero weights) from which ``sparse_conv2d`` runs the direct
#: sparse kernel instead of dense ``conv2d``, for layers with fan-in in*kh*kw below
#: :data:`WIDE_FAN_IN`; see :func:`default_min_sparsity` for the measurements.
SPARSE_MIN_SPARSITY = 0.70
#: The same for wide layers (fan-in >= :data:`WIDE_FAN_IN`, e.g. 3x3 over 256+ channels,
#: usually on small late-stage feature maps), where oneDNN is most efficient.
SPARSE_MIN_SPARSITY_WIDE = 0.80
WIDE_FAN_IN = 2048
#: Output positions per image (OH x OW) under which ``sparse_conv2d`` runs dense ``conv2d``
#: whatever the sparsity. The direct kernel vectorises over output positions, so on tiny
#: planes most vector lanes are padding. Measured in VGG-11 (width 0.5, 28x28 MNIST input,
#: 90 % sparse, 1 thread; dense conv2d time / sparse kernel time) at batch 1 / 8 / 64:
#: 7x7 planes 2.3x / - / 2.3-2.4x, 3x3 planes 3.3-3.6x / 0.97-1.0x / 1.05-1.08x, 1x1 planes
#: 0.28x / 0.31x / 0.15x. So 3x3 planes (9 positions) run sparse and 1x1 planes dense. (The
#: kernel's narrow-plane loops have since made 3x3 planes 5-8x dense at batch 1 and 2.2-2.8x
#: at batch 64: docs/BENCHMARKS.md, issue 12, run 6.)
SPARSE_MIN_POSITIONS = 9


def default_min_sparsity(shape) -> float:
    """The sparsity from which a conv weight of ``shape`` (out, in, kh, kw) runs the sparse kernel.

    Measured on the development machine (AMD EPYC Zen 4, AVX-512/AVX2 kernel vs oneDNN,
    fp32, stride 1 unless noted; time of sparse_conv2d forced sparse / dense conv2d,
    min of interleaved runs, 1 thread, batch 1 and 16; the machine was shared, so
    +-15 %)::

        weight, input                  fan-in  ties dense at   x dense at 80 %   90 %       95 %
        3x3 128->128, 32x32            1152    ~0.58           2.3-3.4           4.1-5.1    6.8-9.9
        3x3 64->64, 56x56               576    ~0.5            2.5               4.3-4.5    7.1-7.8
        3x3 128->128, 32x32, stride 2  1152    ~0.6            1.7-2.0           2.6-3.3    3.5-5.2
        1x1 256->256, 14x14             256    ~0.65 (b1)      1.5-2.6           2.2-3.7    3.2-4.4
        3x3 3->64, 32x32                 27    < 0.6           1.3-1.5           1.3-1.8    1.7-2.0
        3x3 256->256, 14x14            2304    ~0.68-0.75      1.6               3.1-4.4    5.1-5.4
        3x3 512->512, 7x7              4608    ~0.75-0.78      1.2-1.4           2.3-2.9    4.7-8.2

    With 2 threads, 3x3 128->128 on 32x32: 2.2-2.6x at 80 %, 3.4-4.0x at 90 % and 5.1-6.7x
    at 95 % (batch 1), 2.4-2.6x, 3.6-3.8x and 5.2-5.4x (batch 64). The default is 70 % for
    fan-in < 2048 and 80 % above, on the faster side of every measured crossover. Below
    it the dense path is taken, so ``sparse_conv2d`` is never slower than dense conv2d at
    0-50 % sparsity.
    """
    fan_in = math.prod(int(s) for s in shape[1:])
    return SPARSE_MIN_SPARSITY_WIDE if fan_in >= WIDE_FAN_IN else SPARSE_MIN_SPARSITY


_FLOAT_TYPES = (torch.float32, torch.float64)


def as_pair(v, name="argument", minimum=None):
    """[a, b] from an int or a 1- or 2-sequence of ints; with ``minimum``, both must be >= it
    (so that a stride of 0 is this ValueError, not a ZeroDivisionError in a shape formula)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = [int(v)] * 2
    elif isinstance(v, (list, tuple, torch.Size)) and all(isinstance(x, numbers.Integral) for x in v):
        v = [int(x) for x in v]
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if len(v) == 1:
        v = v * 2
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    if minimum is not None and min(v) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(v)}")
    return v


def _conv_args(stride, padding, dilation, kernel_size):
    """Checked (stride, numeric padding or None, dilation) of a convolution: stride and dilation
    >= 1, padding >= 0 (or 'valid'/'same'; None when 'same' would be asymmetric), and no 'same'
    padding with a stride, which torch.nn.functional.conv2d refuses too."""
    stride, dilation = as_pair(stride, "stride", 1), as_pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        if padding == "same" and stride != [1, 1]:
            raise ValueError(f"padding='same' is not supported for strided convolutions (stride={tuple(stride)})")
    else:
        as_pair(padding, "padding", 0)
    return stride, resolve_padding(padding, kernel_size, dilation), dilation


def resolve_padding(padding, kernel_size, dilation):
    """Numeric [ph, pw] for int/pair/'valid'/'same' padding, or None when 'same' would be asymmetric."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0]
        if padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            if any(t % 2 for t in total):
                return None
            return [t // 2 for t in total]
        raise ValueError(f"padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    return as_pair(padding, "padding")


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ---------------------------------------------------------------------------------------
# Registration of the native ops' Python parts (fake kernels for torch.compile, autograd).
# The ops exist only once backend has loaded the library: backend.on_load runs this then.

_registered = False


def _register_native():
    global _registered
    if _registered:
        return
    lib = "slimkit::"

    @torch.library.register_fake(lib + "masked_conv2d_forward")
    def _(input, weight, mask, bias, stride, padding, dilation, groups):
        n, _, h, w = input.shape
        oh = _conv_out(h, weight.shape[2], stride[0], padding[0], dilation[0])
        ow = _conv_out(w, weight.shape[3], stride[1], padding[1], dilation[1])
        return input.new_empty((n, weight.shape[0], oh, ow))

    @torch.library.register_fake(lib + "masked_conv2d_backward")
    def _(grad_out, input, weight, mask, stride, padding, dilation, groups, output_mask):
        gi = input.new_empty(input.shape) if output_mask[0] else input.new_empty((0,))
        gw = weight.new_empty(weight.shape) if output_mask[1] else input.new_empty((0,))
        gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else input.new_empty((0,))
        return gi, gw, gb

    def setup_context(ctx, inputs, output):
        input, weight, mask, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight, mask)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def backward(ctx, grad):
        input, weight, mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        want = [bool(need[0]), bool(need[1]), bool(ctx.has_bias and need[3])]
        if torch.is_grad_enabled():
            # create_graph=True (double backward): the same gradients through differentiable ATen ops.
            stride, padding, dilation, groups = ctx.conf
            gi, gw, gb = torch.ops.aten.convolution_backward(
                grad, input, weight * mask, [weight.shape[0]] if ctx.has_bias else None, stride, padding, dilation,
                False, [0, 0], groups, want)
            gw = gw * mask if want[1] else None
        else:
            gi, gw, gb = torch.ops.slimkit.masked_conv2d_backward(grad, input, weight, mask, *ctx.conf, want)
        return (gi if want[0] else None, gw if want[1] else None, None, gb if want[2] else None,
                None, None, None, None)

    torch.library.register_autograd(lib + "masked_conv2d_forward", backward, setup_context=setup_context)

    @torch.library.register_fake(lib + "sparse_conv2d")
    def _(input, row_ptr, col_idx, values, weight_shape, bias, stride, padding, dilation):
        n, _, h, w = input.shape
        oh = _conv_out(h, weight_shape[2], stride[0], padding[0], dilation[0])
        ow = _conv_out(w, weight_shape[3], stride[1], padding[1], dilation[1])
        return input.new_empty((n, weight_shape[0], oh, ow))

    @torch.library.register_fake(lib + "sparse_conv2d_relu_pool")
    def _(input, row_ptr, col_idx, values, weight_shape, bias, stride, padding, dilation):
        n, _, h, w = input.shape
        oh = _conv_out(h, weight_shape[2], stride[0], padding[0], dilation[0])
        ow = _conv_out(w, weight_shape[3], stride[1], padding[1], dilation[1])
        return input.new_empty((n, weight_shape[0], oh // 2, ow // 2))

    _registered = True


backend.on_load(_register_native)


@backend.constant_under_compile
def _native_when_compiling(device_type: str, op: str) -> bool:
    # Evaluated once while torch.compile traces (the backend's lock cannot be traced);
    # the answer cannot change within a process except through SLIMKIT_KERNELS.
    return backend.use_native(torch.empty(0, device=device_type), op)


def _native(x: torch.Tensor, op: str) -> bool:
    """Whether to run the native kernel ``slimkit::<op>`` for ``x``."""
    if x.dtype not in _FLOAT_TYPES:
        return False
    if torch.compiler.is_compiling():
        return _native_when_compiling(x.device.type, "slimkit::" + op)
    return backend.use_native(x, "slimkit::" + op)


# ---------------------------------------------------------------------------------------
# masked_conv2d

def masked_conv2d_reference(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Pure-PyTorch masked_conv2d (autograd masks the weight gradient through the product)."""
    return F.conv2d(input, weight * mask, bias, stride, padding, dilation, groups)


def masked_conv2d(input, weight, mask, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv2d(input, weight * mask, bias, ...)``; the weight gradient is zero where ``mask`` is.

    Gradients flow to ``input``, ``weight`` and ``bias`` (never to ``mask``). Arguments
    are those of :func:`torch.nn.functional.conv2d`.
    """
    stride, pad, dilation = _conv_args(stride, padding, dilation, weight.shape[2:] if weight.dim() == 4 else (1, 1))
    pad = pad if weight.dim() == 4 else None
    if (pad is None or input.dim() not in (3, 4) or weight.dim() != 4 or not _native(input, "masked_conv2d_forward")
            or not all(t.dtype == input.dtype for t in (weight, mask))):
        return masked_conv2d_reference(input, weight, mask, bias, stride, padding, dilation, groups)
    if input.dim() == 3:  # unbatched, as conv2d allows
        return torch.ops.slimkit.masked_conv2d_forward(input.unsqueeze(0), weight, mask, bias, stride, pad, dilation,
                                                       groups).squeeze(0)
    return torch.ops.slimkit.masked_conv2d_forward(input, weight, mask, bias, stride, pad, dilation, groups)


# ---------------------------------------------------------------------------------------
# sparse_conv2d

class SparseConvWeight(CSRWeight):
    """A conv weight (out, in, kh, kw) in CSR over out x (in*kh*kw), for :func:`sparse_conv2d`.

    ``row_ptr`` (out+1) and ``col_idx`` (nnz) are int32 or int64, ``values`` (nnz) float;
    column ``c*kh*kw + r*kw + s`` is tap (r, s) of input channel c. ``density`` is nnz over
    the weight's size; ``uses_sparse`` says whether :func:`sparse_conv2d` runs the direct
    sparse kernel (sparsity >= ``min_sparsity``, default :func:`default_min_sparsity`) or
    dense ``conv2d``, and ``reason`` says why.
    """

    rank = 4
    shape_doc = "(out, in, kh, kw)"
    min_work = SPARSE_MIN_POSITIONS
    work_unit = "output positions"
    kernel_doc = "direct sparse convolution"
    dense_doc = "dense conv2d"

    def call_floor_note(self) -> str:
        return (f"; output planes under {SPARSE_MIN_POSITIONS} positions run dense conv2d "
                "(the kernel vectorises over positions)")

    @classmethod
    def default_min_sparsity(cls, shape) -> float:
        return default_min_sparsity(shape)


def _positions(input, shape, stride, pad, dilation) -> int:
    """Output positions per image of the convolution (any value if the input is too small:
    the op then raises its own error)."""
    h, w = input.shape[-2], input.shape[-1]
    return (_conv_out(h, shape[2], stride[0], pad[0], dilation[0])
            * _conv_out(w, shape[3], stride[1], pad[1], dilation[1]))


def sparse_conv2d_relu_pool_reference(input, sparse_weight: SparseConvWeight, bias=None, stride=1, padding=0,
                                      dilation=1):
    """What ``torch.ops.slimkit.sparse_conv2d_relu_pool`` computes: the convolution, ReLU, then a
    2x2 / stride-2 max pool (floor mode)."""
    y = sparse_conv2d_reference(input, sparse_weight, bias, stride, padding, dilation)
    return F.max_pool2d(F.relu(y), 2, 2)


def sparse_conv2d_reference(input, sparse_weight: SparseConvWeight, bias=None, stride=1, padding=0, dilation=1):
    return F.conv2d(input, sparse_weight.to_dense(), bias, stride, padding, dilation)


def sparse_conv2d(input, sparse_weight: SparseConvWeight, bias=None, stride=1, padding=0, dilation=1):
    """``conv2d(input, dense(sparse_weight), bias, ...)`` for inference (groups=1).

    Runs the direct sparse kernel when ``sparse_weight.uses_sparse``, the output plane has
    at least :data:`SPARSE_MIN_POSITIONS` positions and the native kernels are available
    for the input's device (on a GPU only under ``SLIMKIT_SPARSE_CUDA=1``: cuDNN on the
    dense weight was faster there), else dense ``conv2d`` on the (cached) dense weight. When autograd needs a gradient through the call (input or bias
    requiring grad), the differentiable dense path is taken: the sparse kernel has no
    backward.
    """
    if not isinstance(sparse_weight, SparseConvWeight):
        raise TypeError(f"sparse_conv2d expects a SparseConvWeight, got {type(sparse_weight).__name__} "
                        "(build one with SparseConvWeight.from_dense(weight))")
    stride, pad, dilation = _conv_args(stride, padding, dilation, sparse_weight.shape[2:])
    needs_grad = torch.is_grad_enabled() and (input.requires_grad or (bias is not None and bias.requires_grad))
    if (not sparse_weight.uses_sparse or needs_grad or pad is None or input.dim() not in (3, 4)
            or not sparse_weight.runs_sparse(_positions(input, sparse_weight.shape, stride, pad, dilation))
            or not backend.sparse_kernels_on(input) or not _native(input, "sparse_conv2d")):
        return sparse_conv2d_reference(input, sparse_weight, bias, stride, padding, dilation)
    w = sparse_weight
    x = input.unsqueeze(0) if input.dim() == 3 else input
    y = torch.ops.slimkit.sparse_conv2d(x, w.row_ptr, w.col_idx, w.values, list(w.shape), bias, stride, pad, dilation)
    return y.squeeze(0) if input.dim() == 3 else y
