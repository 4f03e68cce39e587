"""The CSR inference layers the runtime lowers, from wherever this checkout keeps them.

They are moving from :mod:`slimkit.ops` (``ops.csr.CSRLayer``, ``ops.conv.SparseConv2d``,
``ops.linear.SparseLinear``, ``ops.sparse_inference.to_sparse_inference``) into
:mod:`slimkit.nn.sparse`; the runtime imports them from here only, so it works on both
sides of the move. Once the move has landed everywhere, this module can import from
``slimkit.nn.sparse`` alone.
"""
from __future__ import annotations

try:
    from slimkit.nn.sparse import CSRLayer, SparseConv2d, SparseLinear, to_sparse_inference
except ImportError:  # before the move
    from slimkit.ops.conv import SparseConv2d
    from slimkit.ops.csr import CSRLayer
    from slimkit.ops.linear import SparseLinear
    from slimkit.ops.sparse_inference import to_sparse_inference

__all__ = ["CSRLayer", "SparseConv2d", "SparseLinear", "to_sparse_inference"]
