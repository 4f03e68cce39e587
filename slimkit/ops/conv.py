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
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.nn.spec import serializable
from slimkit.ops import backend

__all__ = ["SPARSE_MIN_SPARSITY", "SPARSE_MIN_SPARSITY_WIDE", "WIDE_FAN_IN", "default_min_sparsity", "masked_conv2d",
           "masked_conv2d_reference", "sparse_conv2d", "sparse_conv2d_reference", "SparseConvWeight", "SparseConv2d",
           "SparseLayerReport", "to_sparse_inference"]

#: Sparsity (fraction of zero weights) from which ``sparse_conv2d`` runs the direct
#: sparse kernel instead of dense ``conv2d``, for layers with fan-in in*kh*kw below
#: :data:`WIDE_FAN_IN`; see :func:`default_min_sparsity` for the measurements.
SPARSE_MIN_SPARSITY = 0.70
#: The same for wide layers (fan-in >= :data:`WIDE_FAN_IN`, e.g. 3x3 over 256+ channels,
#: usually on small late-stage feature maps), where oneDNN is most efficient.
SPARSE_MIN_SPARSITY_WIDE = 0.80
WIDE_FAN_IN = 2048


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


def _pair(v, name="argument"):
    if isinstance(v, int):
        return [v, v]
    v = [int(x) for x in v]
    if len(v) == 1:
        return v * 2
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def _resolve_padding(padding, kernel_size, dilation):
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
    return _pair(padding, "padding")


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

    _registered = True


backend.on_load(_register_native)


@torch.compiler.assume_constant_result
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
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    pad = _resolve_padding(padding, weight.shape[2:], dilation) if weight.dim() == 4 else None
    if (pad is None or input.dim() not in (3, 4) or weight.dim() != 4 or not _native(input, "masked_conv2d_forward")
            or not all(t.dtype == input.dtype for t in (weight, mask))):
        return masked_conv2d_reference(input, weight, mask, bias, stride, padding, dilation, groups)
    if input.dim() == 3:  # unbatched, as conv2d allows
        return torch.ops.slimkit.masked_conv2d_forward(input.unsqueeze(0), weight, mask, bias, stride, pad, dilation,
                                                       groups).squeeze(0)
    return torch.ops.slimkit.masked_conv2d_forward(input, weight, mask, bias, stride, pad, dilation, groups)


# ---------------------------------------------------------------------------------------
# sparse_conv2d

class SparseConvWeight:
    """A conv weight (out, in, kh, kw) in CSR over out x (in*kh*kw), for :func:`sparse_conv2d`.

    ``row_ptr`` (out+1) and ``col_idx`` (nnz) are int32 or int64, ``values`` (nnz) float;
    column ``c*kh*kw + r*kw + s`` is tap (r, s) of input channel c. ``density`` is nnz over
    the weight's size; ``uses_sparse`` says whether :func:`sparse_conv2d` runs the direct
    sparse kernel (sparsity >= ``min_sparsity``, default :func:`default_min_sparsity`) or
    dense ``conv2d``, and ``reason`` says why.
    """

    def __init__(self, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor, shape,
                 min_sparsity: float | None = None, validate: bool = True):
        self.shape = torch.Size(int(s) for s in shape)
        self.row_ptr, self.col_idx, self.values = row_ptr, col_idx, values
        if validate:
            self._validate()
        self.min_sparsity = default_min_sparsity(self.shape) if min_sparsity is None else float(min_sparsity)
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ValueError(f"min_sparsity must be in [0, 1], got {self.min_sparsity}")
        numel = math.prod(self.shape)
        self.nnz = int(values.numel())
        self.density = self.nnz / numel if numel else 0.0
        self._dense = None
        if self.sparsity >= self.min_sparsity - 1e-4:  # "pruned to 70 %" may round to 69.999 %
            self.uses_sparse = True
            self.reason = (f"sparsity {self.sparsity:.1%} >= {self.min_sparsity:.0%}: direct sparse convolution "
                           f"({self.nnz} of {numel} weights)")
        else:
            self.uses_sparse = False
            self.reason = (f"sparsity {self.sparsity:.1%} < {self.min_sparsity:.0%}, below which the direct sparse "
                           "kernel is not faster than dense: dense conv2d")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def _validate(self):
        shape, rp, ci, v = self.shape, self.row_ptr, self.col_idx, self.values
        if len(shape) != 4 or min(shape) < 1:
            raise ValueError(f"SparseConvWeight: shape must be (out, in, kh, kw) of positive sizes, got {tuple(shape)}")
        for name, t in (("row_ptr", rp), ("col_idx", ci)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"SparseConvWeight: {name} must be a 1-D int32/int64 tensor")
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
            raise ValueError("SparseConvWeight: values must be a 1-D floating tensor")
        if not (rp.device == ci.device == v.device):
            raise ValueError("SparseConvWeight: row_ptr, col_idx and values must be on one device")
        if rp.numel() != shape[0] + 1:
            raise ValueError(f"SparseConvWeight: row_ptr has {rp.numel()} entries, expected out_channels + 1 = "
                             f"{shape[0] + 1}")
        if ci.numel() != v.numel():
            raise ValueError(f"SparseConvWeight: col_idx has {ci.numel()} entries but values has {v.numel()}")
        if int(rp[0]) != 0 or int(rp[-1]) != v.numel() or bool((rp[1:] < rp[:-1]).any()):
            raise ValueError("SparseConvWeight: row_ptr must start at 0, be non-decreasing and end at nnz")
        k = shape[1] * shape[2] * shape[3]
        if ci.numel() and (int(ci.min()) < 0 or int(ci.max()) >= k):
            raise ValueError(f"SparseConvWeight: col_idx must lie in [0, in*kh*kw = {k})")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, min_sparsity: float | None = None,
                   index_dtype: torch.dtype = torch.int32) -> "SparseConvWeight":
        """CSR of ``weight`` (out, in, kh, kw): exact zeros are dropped, everything else kept."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or not weight.is_floating_point():
            raise ValueError("SparseConvWeight.from_dense expects a 4-D floating weight (out, in, kh, kw)")
        if index_dtype not in (torch.int32, torch.int64):
            raise ValueError("index_dtype must be torch.int32 or torch.int64")
        w = weight.detach()
        flat = w.reshape(w.shape[0], -1)
        nz = flat != 0
        row_ptr = torch.zeros(w.shape[0] + 1, dtype=torch.int64, device=w.device)
        row_ptr[1:] = nz.sum(1).cumsum(0)
        col_idx = nz.nonzero()[:, 1]  # row-major order: sorted by column within each row
        values = flat[nz].contiguous()
        return cls(row_ptr.to(index_dtype), col_idx.to(index_dtype).contiguous(), values, w.shape, min_sparsity,
                   validate=False)

    def to_dense(self) -> torch.Tensor:
        """The dense (out, in, kh, kw) weight (cached)."""
        if self._dense is None:
            out, k = self.shape[0], math.prod(self.shape[1:])
            rows = torch.repeat_interleave(torch.arange(out, device=self.values.device),
                                           (self.row_ptr[1:] - self.row_ptr[:-1]).long())
            dense = torch.zeros(out, k, dtype=self.values.dtype, device=self.values.device)
            dense[rows, self.col_idx.long()] = self.values
            self._dense = dense.reshape(self.shape)
        return self._dense

    def to(self, *args, **kwargs) -> "SparseConvWeight":
        """A copy with ``values`` converted like ``Tensor.to`` (indices follow the device only)."""
        values = self.values.to(*args, **kwargs)
        dev = values.device
        return SparseConvWeight(self.row_ptr.to(dev), self.col_idx.to(dev), values, self.shape, self.min_sparsity,
                                validate=False)

    def __repr__(self):
        return (f"SparseConvWeight(shape={tuple(self.shape)}, nnz={self.nnz}, density={self.density:.3f}, "
                f"uses_sparse={self.uses_sparse})")


def sparse_conv2d_reference(input, sparse_weight: SparseConvWeight, bias=None, stride=1, padding=0, dilation=1):
    return F.conv2d(input, sparse_weight.to_dense(), bias, stride, padding, dilation)


def sparse_conv2d(input, sparse_weight: SparseConvWeight, bias=None, stride=1, padding=0, dilation=1):
    """``conv2d(input, dense(sparse_weight), bias, ...)`` for inference (groups=1).

    Runs the direct sparse kernel when ``sparse_weight.uses_sparse`` and the native
    kernels are available for the input's device, else dense ``conv2d`` on the (cached)
    dense weight. When autograd needs a gradient through the call (input or bias
    requiring grad), the differentiable dense path is taken: the sparse kernel has no
    backward.
    """
    if not isinstance(sparse_weight, SparseConvWeight):
        raise TypeError(f"sparse_conv2d expects a SparseConvWeight, got {type(sparse_weight).__name__} "
                        "(build one with SparseConvWeight.from_dense(weight))")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    pad = _resolve_padding(padding, sparse_weight.shape[2:], dilation)
    needs_grad = torch.is_grad_enabled() and (input.requires_grad or (bias is not None and bias.requires_grad))
    if (not sparse_weight.uses_sparse or needs_grad or pad is None or input.dim() not in (3, 4)
            or not _native(input, "sparse_conv2d")):
        return sparse_conv2d_reference(input, sparse_weight, bias, stride, padding, dilation)
    w = sparse_weight
    x = input.unsqueeze(0) if input.dim() == 3 else input
    y = torch.ops.slimkit.sparse_conv2d(x, w.row_ptr, w.col_idx, w.values, list(w.shape), bias, stride, pad, dilation)
    return y.squeeze(0) if input.dim() == 3 else y


# ---------------------------------------------------------------------------------------
# Inference module and model conversion

@serializable
class SparseConv2d(nn.Module):
    """Inference-only conv2d holding a CSR weight (buffers ``row_ptr``, ``col_idx``, ``values``, ``bias``).

    Build it with :meth:`from_conv`; the state_dict holds the CSR tensors, whose sizes
    depend on the weights, so loading resizes them.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 min_sparsity=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(_pair(kernel_size, "kernel_size"))
        self.stride = tuple(_pair(stride, "stride"))
        self.padding = tuple(_pair(padding, "padding"))
        self.dilation = tuple(_pair(dilation, "dilation"))
        self.min_sparsity = min_sparsity
        self.register_buffer("row_ptr", torch.zeros(self.out_channels + 1, dtype=torch.int32))
        self.register_buffer("col_idx", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("values", torch.zeros(0))
        self.register_buffer("bias", torch.zeros(self.out_channels) if bias else None)
        self._sw_cache = None

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def weight_counts(self) -> tuple[int, int]:
        """(elements, non-zeros) of the dense weight this layer stands for. slimkit's counters
        (parameters, non-zeros, MACs, sparsity) use it because the weight lives in buffers."""
        return math.prod(self.weight_shape), int(torch.count_nonzero(self.values))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, min_sparsity: float | None = None) -> "SparseConv2d":
        """From an ``nn.Conv2d`` or ``MaskedConv2d`` (whose weight is taken times its mask)."""
        from slimkit.nn.masked import MaskedMixin

        problem = _unsupported(conv)
        if problem:
            raise ValueError(f"cannot convert to SparseConv2d: {problem}")
        weight = conv.weight.detach()
        if isinstance(conv, MaskedMixin):
            weight = weight * conv.weight_mask
        pad = _resolve_padding(conv.padding, conv.kernel_size, conv.dilation)
        m = cls(conv.in_channels, conv.out_channels, list(conv.kernel_size), list(conv.stride), pad,
                list(conv.dilation), conv.bias is not None, min_sparsity)
        sw = SparseConvWeight.from_dense(weight, min_sparsity)
        m.row_ptr, m.col_idx, m.values = sw.row_ptr, sw.col_idx, sw.values
        if conv.bias is not None:
            m.bias = conv.bias.detach().clone()
        return m

    @property
    def sparse_weight(self) -> SparseConvWeight:
        key = tuple((t.data_ptr(), t.dtype, t.device, t.shape) for t in (self.row_ptr, self.col_idx, self.values))
        if self._sw_cache is None or self._sw_cache[0] != key:
            sw = SparseConvWeight(self.row_ptr, self.col_idx, self.values, self.weight_shape, self.min_sparsity)
            self._sw_cache = (key, sw)
        return self._sw_cache[1]

    def forward(self, x):
        return sparse_conv2d(x, self.sparse_weight, self.bias, self.stride, self.padding, self.dilation)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The CSR sizes depend on the weights: take the incoming ones before the copy.
        for name in ("row_ptr", "col_idx", "values"):
            t = state_dict.get(prefix + name)
            cur = getattr(self, name)
            if isinstance(t, torch.Tensor) and t.dim() == 1 and t.shape != cur.shape:
                dtype = t.dtype if name != "values" and t.dtype in (torch.int32, torch.int64) else cur.dtype
                setattr(self, name, torch.empty(t.shape, dtype=dtype, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._sw_cache = None
        if not error_msgs:
            try:
                self.sparse_weight  # validate the loaded CSR now, with a clear message
            except ValueError as exc:
                error_msgs.append(f"{prefix or 'SparseConv2d'}: {exc}")

    def extra_repr(self):
        sw = self.sparse_weight
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"sparsity={sw.sparsity:.3f}, uses_sparse={sw.uses_sparse}")


def _unsupported(conv) -> str | None:
    """Why ``conv`` cannot become a SparseConv2d, or None."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not a Conv2d"
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups}); sparse_conv2d supports groups=1, kept dense"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}; sparse_conv2d pads with zeros, kept dense"
    if _resolve_padding(conv.padding, conv.kernel_size, conv.dilation) is None:
        return "asymmetric 'same' padding, kept dense"
    return None


class SparseLayerReport(tuple):
    """One conv of :func:`to_sparse_inference`: a (name, uses_sparse, sparsity) tuple with ``.reason``."""

    def __new__(cls, name: str, uses_sparse: bool, sparsity: float, reason: str = ""):
        self = super().__new__(cls, (name, bool(uses_sparse), float(sparsity)))
        self.reason = reason
        return self

    name = property(lambda self: self[0])
    uses_sparse = property(lambda self: self[1])
    sparsity = property(lambda self: self[2])

    def __repr__(self):
        return (f"SparseLayerReport(name={self[0]!r}, uses_sparse={self[1]}, sparsity={self[2]:.3f}, "
                f"reason={self.reason!r})")


def to_sparse_inference(model: nn.Module, min_sparsity: float | None = None) -> list[SparseLayerReport]:
    """Replace every convertible Conv2d/MaskedConv2d of ``model`` by a :class:`SparseConv2d`, in place.

    Returns one (name, uses_sparse, sparsity) per conv layer, with ``.reason``. Layers
    under ``min_sparsity`` (default :func:`default_min_sparsity` per layer) become SparseConv2d too
    but run dense conv2d; grouped convs and non-zero padding modes stay as they are.
    """
    from slimkit.nn.masked import MaskedMixin

    reports = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Conv2d):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            weight = child.weight.detach()
            if isinstance(child, MaskedMixin):
                weight = weight * child.weight_mask
            sparsity = float((weight == 0).sum()) / weight.numel() if weight.numel() else 0.0
            problem = _unsupported(child)
            if problem:
                reports.append(SparseLayerReport(full, False, sparsity, problem))
                continue
            new = SparseConv2d.from_conv(child, min_sparsity)
            parent._modules[name] = new
            sw = new.sparse_weight
            reports.append(SparseLayerReport(full, sw.uses_sparse, sw.sparsity, sw.reason))
    return reports
