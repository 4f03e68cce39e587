// Raw-pointer launchers of the conv and sparse linear CUDA kernels (masked_conv.cu,
// sparse_conv.cu, sparse_linear.cu).
//
// The .cu files include only the CUDA runtime, so they compile with nvcc against
// any torch (the CPU wheel ships no usable c10/cuda headers); the TORCH_LIBRARY_IMPL
// glue that checks tensors and picks the stream lives in *_glue.cpp, built only
// when torch has CUDA. Every launcher enqueues on `stream` and returns the launch
// status (cudaGetLastError) for the glue to turn into a Python error.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace slimkit {
namespace cuda {

// out[i] = a[i] * mask[i], i < n (out may alias a).
cudaError_t mask_multiply_f32(float* out, const float* a, const float* mask, int64_t n, cudaStream_t stream);
cudaError_t mask_multiply_f64(double* out, const double* a, const double* mask, int64_t n, cudaStream_t stream);

// Geometry of a 2-D convolution, NCHW input (N, C, H, W) -> output (N, OC, OH, OW),
// and the number of nonzeros of its CSR weight.
struct ConvShape {
  int64_t N, C, H, W, OC, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW, nnz;
};

// The sparse kernels below take CSR indices as they are on the device: slimkit
// validates a CSR weight once, when it is built (slimkit/ops/csr.py), not per call,
// which would copy the indices to the host and synchronise. So the kernels never
// read out of bounds whatever the indices: a row's range is clamped to [0, nnz] and
// a column outside the fan-in contributes nothing.

// Direct sparse convolution: y = conv2d(x, W) + bias with W given in CSR over
// OC x (C*kh*kw) (row_ptr: OC+1, col_idx/values: s.nnz; int64 indices). x, y
// contiguous; bias may be null.
cudaError_t sparse_conv2d_f32(const float* x, const int64_t* row_ptr, const int64_t* col_idx, const float* values,
                              const float* bias, float* y, const ConvShape& s, cudaStream_t stream);
cudaError_t sparse_conv2d_f64(const double* x, const int64_t* row_ptr, const int64_t* col_idx, const double* values,
                              const double* bias, double* y, const ConvShape& s, cudaStream_t stream);

// Sparse fully connected layer: y (N x OUT) = x (N x K) W^T + bias, W in CSR over OUT x K
// (int64 indices, nnz nonzeros). x, y contiguous; bias may be null.
cudaError_t sparse_linear_f32(const float* x, const int64_t* row_ptr, const int64_t* col_idx, const float* values,
                              const float* bias, float* y, int64_t N, int64_t K, int64_t OUT, int64_t nnz,
                              cudaStream_t stream);
cudaError_t sparse_linear_f64(const double* x, const int64_t* row_ptr, const int64_t* col_idx, const double* values,
                              const double* bias, double* y, int64_t N, int64_t K, int64_t OUT, int64_t nnz,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace slimkit
