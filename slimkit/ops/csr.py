"""CSR weights: the data that sparse_conv2d and sparse_linear take.

A pruned weight of shape (out, *fan_in) is stored in CSR over out x prod(fan_in):
``row_ptr`` (out+1), ``col_idx`` and ``values`` (nnz). :class:`CSRWeight` validates it once,
when it is built (the native CUDA kernels do not re-check the indices per call, which
would copy them to the host and synchronise; they only clamp what they read), converts
it, and decides, from its sparsity, whether the sparse kernel runs at all (``uses_sparse``,
with ``reason``). The inference layers that hold such weights in buffers (``SparseConv2d``,
``SparseLinear``) are modules and live in :mod:`slimkit.nn.sparse`.
"""
from __future__ import annotations

import math

import torch

__all__ = ["CSRWeight"]


class CSRWeight:
    """A weight (out, *fan_in) in CSR over out x prod(fan_in).

    ``row_ptr`` (out+1) and ``col_idx`` (nnz) are int32 or int64, ``values`` (nnz) float;
    rows are output units, columns the flattened fan-in. ``density`` is nnz over the
    weight's size; ``uses_sparse`` says whether the sparse kernel runs (sparsity >=
    ``min_sparsity``, default :meth:`default_min_sparsity`) or the dense op does, and
    ``reason`` says why. Subclasses fix the rank and the default crossover.
    """

    #: Number of dimensions of the dense weight, and how to name them in messages.
    rank = 2
    shape_doc = "(out, in)"
    #: What the sparse kernel is called in ``reason``.
    kernel_doc = "sparse kernel"
    dense_doc = "dense op"

    def __init__(self, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor, shape,
                 min_sparsity: float | None = None, validate: bool = True):
        self.shape = torch.Size(int(s) for s in shape)
        if len(self.shape) != self.rank or min(self.shape) < 1:  # always: the shape formulas below divide by it
            raise ValueError(f"{type(self).__name__}: shape must be {self.shape_doc} of positive sizes, got "
                             f"{tuple(self.shape)}")
        self.row_ptr, self.col_idx, self.values = row_ptr, col_idx, values
        if validate:
            self._validate()
        self.min_sparsity = self.default_min_sparsity(self.shape) if min_sparsity is None else float(min_sparsity)
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ValueError(f"min_sparsity must be in [0, 1], got {self.min_sparsity}")
        numel = math.prod(self.shape)
        self.shape_list = list(self.shape)  # the ops' int[] argument, built once
        self.nnz = int(values.numel())
        self.density = self.nnz / numel if numel else 0.0
        self._dense = None
        if self.sparsity >= self.min_sparsity - 1e-4:  # "pruned to 70 %" may round to 69.999 %
            self.uses_sparse = True
            self.reason = (f"sparsity {self.sparsity:.1%} >= {self.min_sparsity:.0%}: {self.kernel_doc} "
                           f"({self.nnz} of {numel} weights)" + self.call_floor_note())
        else:
            self.uses_sparse = False
            self.reason = (f"sparsity {self.sparsity:.1%} < {self.min_sparsity:.0%}, below which the "
                           f"{self.kernel_doc} is not faster than dense: {self.dense_doc}")

    @classmethod
    def default_min_sparsity(cls, shape) -> float:
        raise NotImplementedError

    #: The least work per call (in ``work_unit``) for which the sparse kernel pays (measured).
    min_work = 0
    work_unit = "MACs per call"

    def runs_sparse(self, work: int) -> bool:
        """Whether a call doing ``work`` runs the sparse kernel, as far as the weight decides:
        its sparsity and the per-call floor. The op adds what only a call knows (the backend
        for the input's device, autograd); ``slimkit info``'s kernel plan asks the same."""
        return self.uses_sparse and work >= self.min_work

    def kernel_reason(self, work: int) -> str:
        """Why :meth:`runs_sparse` answers as it does for ``work``."""
        if not self.uses_sparse:
            return f"sparsity {self.sparsity:.1%} < {self.min_sparsity:.0%}"
        if work < self.min_work:
            return f"{work:,} {self.work_unit} < {self.min_work:,}"
        return f"sparsity {self.sparsity:.1%} >= {self.min_sparsity:.0%}, {work:,} {self.work_unit}"

    def call_floor_note(self) -> str:
        """What ``reason`` adds for a sparse weight whose op still runs dense on some calls
        (too little work per call); "" when there is no such floor."""
        return ""

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def _validate(self):
        name, shape, rp, ci, v = type(self).__name__, self.shape, self.row_ptr, self.col_idx, self.values
        for tname, t in (("row_ptr", rp), ("col_idx", ci)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{name}: {tname} must be a 1-D int32/int64 tensor")
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
            raise ValueError(f"{name}: values must be a 1-D floating tensor")
        if not (rp.device == ci.device == v.device):
            raise ValueError(f"{name}: row_ptr, col_idx and values must be on one device")
        if rp.numel() != shape[0] + 1:
            raise ValueError(f"{name}: row_ptr has {rp.numel()} entries, expected {shape[0] + 1} (rows + 1)")
        if ci.numel() != v.numel():
            raise ValueError(f"{name}: col_idx has {ci.numel()} entries but values has {v.numel()}")
        if int(rp[0]) != 0 or int(rp[-1]) != v.numel() or bool((rp[1:] < rp[:-1]).any()):
            raise ValueError(f"{name}: row_ptr must start at 0, be non-decreasing and end at nnz")
        k = math.prod(shape[1:])
        if ci.numel() and (int(ci.min()) < 0 or int(ci.max()) >= k):
            raise ValueError(f"{name}: col_idx must lie in [0, {k}) (the flattened fan-in)")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, min_sparsity: float | None = None,
                   index_dtype: torch.dtype = torch.int32):
        """CSR of ``weight``: exact zeros are dropped, everything else kept."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != cls.rank or not weight.is_floating_point():
            raise ValueError(f"{cls.__name__}.from_dense expects a {cls.rank}-D floating weight {cls.shape_doc}")
        if index_dtype not in (torch.int32, torch.int64):
            raise ValueError("index_dtype must be torch.int32 or torch.int64")
        if weight.numel() == 0:
            raise ValueError(f"{cls.__name__}: shape must be {cls.shape_doc} of positive sizes, got "
                             f"{tuple(weight.shape)}")
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
        """The dense weight (cached)."""
        if self._dense is None:
            out, k = self.shape[0], math.prod(self.shape[1:])
            rows = torch.repeat_interleave(torch.arange(out, device=self.values.device),
                                           (self.row_ptr[1:] - self.row_ptr[:-1]).long())
            dense = torch.zeros(out, k, dtype=self.values.dtype, device=self.values.device)
            dense[rows, self.col_idx.long()] = self.values
            self._dense = dense.reshape(self.shape)
        return self._dense

    def to(self, *args, **kwargs):
        """A copy with ``values`` converted like ``Tensor.to`` (indices follow the device only)."""
        values = self.values.to(*args, **kwargs)
        dev = values.device
        return type(self)(self.row_ptr.to(dev), self.col_idx.to(dev), values, self.shape, self.min_sparsity,
                          validate=False)

    def __repr__(self):
        return (f"{type(self).__name__}(shape={tuple(self.shape)}, nnz={self.nnz}, density={self.density:.3f}, "
                f"uses_sparse={self.uses_sparse})")
