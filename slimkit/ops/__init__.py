"""slimkit's kernels, public API.

Each op runs the native extension (slimkit._C, built from csrc/) when it is
available and the pure-PyTorch reference otherwise; :mod:`slimkit.ops.backend`
decides, and ``slimkit doctor`` says which is active.
"""
from slimkit.ops.kd import kd_loss
from slimkit.ops.gmm import gmm_prior
from slimkit.ops.conv import SparseConvWeight, masked_conv2d, sparse_conv2d
from slimkit.ops.linear import SparseLinearWeight, sparse_linear
from slimkit.ops.pool import max_pool2x2

__all__ = ["kd_loss", "gmm_prior", "masked_conv2d", "sparse_conv2d", "SparseConvWeight", "sparse_linear",
           "SparseLinearWeight", "max_pool2x2"]
