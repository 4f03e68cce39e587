"""Sparse inference layers and the conversion to them (``slimkit compress --sparse-inference``).

:class:`SparseConv2d` and :class:`SparseLinear` hold a pruned weight in CSR (buffers
``row_ptr``, ``col_idx``, ``values``) and run :func:`slimkit.ops.sparse_conv2d` /
:func:`slimkit.ops.sparse_linear`; :class:`CSRLayer` is what they share: CSR buffers whose
sizes follow the loaded weights, the counts slimkit's counters read, and a plain dense
twin for export and size comparisons. Each weight (a :class:`slimkit.ops.csr.CSRWeight`)
picks the dense path itself below the sparsity where its sparse kernel stops paying.

:func:`to_sparse_inference` replaces every convolution and fully connected layer that the
sparse kernels support by its CSR twin and reports, per layer, whether it runs the sparse
kernel and why. Codebook- and int8-quantized layers stay as they are: their stored form
(a few bits per weight) is smaller than CSR's 32-bit value + 32-bit index.

Type names: these layers lived in ``slimkit.ops.conv`` / ``slimkit.ops.linear`` before;
files written then name them so, and each class lists that name in
``slimkit_type_aliases``, so those files still load.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.nn.quantized import CodebookMixin, Int8Mixin
from slimkit.nn.spec import serializable
from slimkit.nn.surgery import effective_weight, replace_layer
from slimkit.ops.conv import SparseConvWeight, as_pair, resolve_padding, sparse_conv2d
from slimkit.ops.csr import CSRWeight
from slimkit.ops import linear as linear_ops  # SPARSE_LINEAR_MIN_MACS read at call time: one value
from slimkit.ops.linear import SparseLinearWeight, sparse_linear

__all__ = ["CSRLayer", "SparseConv2d", "SparseLinear", "SparseLayerReport", "to_sparse_inference",
           "unsupported_reason"]


class CSRLayer(nn.Module):
    """Base of the inference-only layers that hold a :class:`CSRWeight` in buffers
    ``row_ptr``, ``col_idx``, ``values`` (and ``bias``).

    Subclasses set ``weight_class`` and define ``weight_shape`` and ``dense_layer``.
    The CSR sizes depend on the weights, so loading a state_dict resizes the buffers
    and validates the result (a corrupt file is an error message, not a crash).
    """

    weight_class: type[CSRWeight] = CSRWeight

    def _init_csr(self, rows: int, bias: bool, min_sparsity: float | None) -> None:
        self.min_sparsity = min_sparsity
        self.register_buffer("row_ptr", torch.zeros(rows + 1, dtype=torch.int32))
        self.register_buffer("col_idx", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("values", torch.zeros(0))
        self.register_buffer("bias", torch.zeros(rows) if bias else None)
        self._sw_cache = None

    @property
    def weight_shape(self) -> tuple:
        raise NotImplementedError

    def _set_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        sw = self.weight_class.from_dense(weight, self.min_sparsity)
        self.row_ptr, self.col_idx, self.values = sw.row_ptr, sw.col_idx, sw.values
        if bias is not None:
            self.bias = bias.detach().clone()

    def weight_counts(self) -> tuple[int, int]:
        """(elements, non-zeros) of the dense weight this layer stands for. slimkit's counters
        (parameters, non-zeros, MACs, sparsity) use it because the weight lives in buffers."""
        return math.prod(self.weight_shape), int(torch.count_nonzero(self.values))

    @property
    def sparse_weight(self) -> CSRWeight:
        # Rebuilt (and validated) only when a buffer is replaced or modified in place; the
        # check runs on every forward, so it is written out (a small layer's kernel takes a few us).
        buffers = self._buffers
        rp, ci, v = buffers["row_ptr"], buffers["col_idx"], buffers["values"]
        c = self._sw_cache
        if (c is None or c[0] is not rp or c[1] is not ci or c[2] is not v or c[3] != rp._version
                or c[4] != ci._version or c[5] != v._version):
            sw = self.weight_class(rp, ci, v, self.weight_shape, self.min_sparsity)
            self._sw_cache = c = (rp, ci, v, rp._version, ci._version, v._version, sw)
        return c[6]

    def dense_layer(self) -> nn.Module:
        """A new plain layer (nn.Conv2d, nn.Linear) of this one's shape and hyper-parameters."""
        raise NotImplementedError

    def to_dense_module(self) -> nn.Module:
        """The plain dense layer with the same weights (export, size comparisons, timing twins)."""
        dense = self.sparse_weight.to_dense()
        layer = self.dense_layer().to(device=dense.device, dtype=dense.dtype)
        with torch.no_grad():
            layer.weight.copy_(dense.reshape(layer.weight.shape))
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

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
                error_msgs.append(f"{prefix or type(self).__name__}: {exc}")


@serializable
class SparseConv2d(CSRLayer):
    """Inference-only conv2d holding a CSR weight (buffers ``row_ptr``, ``col_idx``, ``values``, ``bias``).

    Build it with :meth:`from_conv`; the state_dict holds the CSR tensors, whose sizes
    depend on the weights, so loading resizes them.
    """

    slimkit_type_aliases = ("slimkit.ops.conv.SparseConv2d",)  # its name before it moved into slimkit.nn
    weight_class = SparseConvWeight

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 min_sparsity=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(as_pair(kernel_size, "kernel_size", 1))
        self.stride = tuple(as_pair(stride, "stride", 1))
        self.padding = tuple(as_pair(padding, "padding", 0))
        self.dilation = tuple(as_pair(dilation, "dilation", 1))
        self._init_csr(self.out_channels, bias, min_sparsity)

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels, *self.kernel_size)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, min_sparsity: float | None = None) -> "SparseConv2d":
        """From an ``nn.Conv2d`` or ``MaskedConv2d`` (whose weight is taken times its mask)."""
        problem = unsupported_reason(conv)
        if problem:
            raise ValueError(f"cannot convert to SparseConv2d: {problem}")
        pad = resolve_padding(conv.padding, conv.kernel_size, conv.dilation)
        m = cls(conv.in_channels, conv.out_channels, list(conv.kernel_size), list(conv.stride), pad,
                list(conv.dilation), conv.bias is not None, min_sparsity)
        m._set_weight(effective_weight(conv).detach(), conv.bias)
        return m

    def dense_layer(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=self.bias is not None)

    def forward(self, x):
        return sparse_conv2d(x, self.sparse_weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        sw = self.sparse_weight
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"sparsity={sw.sparsity:.3f}, uses_sparse={sw.uses_sparse}")


def unsupported_reason(conv) -> str | None:
    """Why ``conv`` cannot become a SparseConv2d, or None."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not a Conv2d"
    if conv.groups != 1:
        return f"grouped convolution (groups={conv.groups}); sparse_conv2d supports groups=1, kept dense"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}; sparse_conv2d pads with zeros, kept dense"
    if resolve_padding(conv.padding, conv.kernel_size, conv.dilation) is None:
        return "asymmetric 'same' padding, kept dense"
    return None


@serializable
class SparseLinear(CSRLayer):
    """Inference-only fully connected layer holding a CSR weight (buffers ``row_ptr``,
    ``col_idx``, ``values``, ``bias``). Build it with :meth:`from_linear`."""

    slimkit_type_aliases = ("slimkit.ops.linear.SparseLinear",)  # its name before it moved into slimkit.nn
    weight_class = SparseLinearWeight

    def __init__(self, in_features, out_features, bias=True, min_sparsity=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_csr(self.out_features, bias, min_sparsity)

    @property
    def weight_shape(self):
        return (self.out_features, self.in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, min_sparsity: float | None = None) -> "SparseLinear":
        """From an ``nn.Linear`` or ``MaskedLinear`` (whose weight is taken times its mask)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"cannot convert to SparseLinear: {type(linear).__name__} is not a Linear")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, min_sparsity)
        m._set_weight(effective_weight(linear).detach(), linear.bias)
        return m

    def dense_layer(self) -> nn.Linear:
        return nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)

    def forward(self, x):
        # the buffer dict, not the attribute: this runs per call of a layer whose whole F.linear takes a few us
        sw, bias = self.sparse_weight, self._buffers["bias"]
        if not sw.uses_sparse or x.numel() * self.out_features < linear_ops.SPARSE_LINEAR_MIN_MACS:
            # the dense path sparse_linear would take, without its other checks
            return F.linear(x, sw.to_dense(), bias)
        return sparse_linear(x, sw, bias)

    def extra_repr(self):
        sw = self.sparse_weight
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"sparsity={sw.sparsity:.3f}, uses_sparse={sw.uses_sparse}")


#: The module types of this file, registered by the engine (``slimkit.nn.builtin``).
SPARSE_MODULES = (SparseConv2d, SparseLinear)


# --------------------------------------------------------------------------- conversion

class SparseLayerReport(tuple):
    """One layer of :func:`to_sparse_inference`: a (name, uses_sparse, sparsity) tuple with ``.reason``."""

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


def kept_as_is(layer: nn.Module) -> str | None:
    """Why :func:`to_sparse_inference` leaves ``layer`` as it is, or None (it is converted)."""
    if isinstance(layer, CodebookMixin):
        return "codebook-quantized: kept in its codebook form, smaller than CSR (runs dense)"
    if isinstance(layer, Int8Mixin):
        return "int8-quantized: kept in its int8 form, smaller than CSR (runs dense)"
    if isinstance(layer, nn.Conv2d):
        return unsupported_reason(layer)
    return None


def to_sparse_inference(model: nn.Module, min_sparsity: float | None = None) -> list[SparseLayerReport]:
    """Replace every convertible Conv2d/Linear (masked or not) of ``model`` by its CSR twin, in place.

    Returns one (name, uses_sparse, sparsity) per conv and linear layer, with ``.reason``.
    Layers under ``min_sparsity`` (default: each weight class's measured crossover)
    are converted too but run the dense op; grouped convs, non-zero padding modes and
    quantized layers stay as they are.
    """
    reports = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, (nn.Conv2d, nn.Linear)):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            weight = effective_weight(child).detach()
            sparsity = float((weight == 0).sum()) / weight.numel() if weight.numel() else 0.0
            problem = kept_as_is(child)
            if problem:
                reports.append(SparseLayerReport(full, False, sparsity, problem))
                continue
            if isinstance(child, nn.Conv2d):
                new = SparseConv2d.from_conv(child, min_sparsity)
            else:
                new = SparseLinear.from_linear(child, min_sparsity)
            replace_layer(parent, name, new)
            sw = new.sparse_weight
            reports.append(SparseLayerReport(full, sw.uses_sparse, sw.sparsity, sw.reason))
    return reports
