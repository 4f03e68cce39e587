// CUDA sparse fully connected layer for sparse_linear: y = x W^T + bias with W in CSR
// (out_features x in_features).
//
// One warp per (sample n, output row o): the lanes stride over the row's nonzeros,
// each adding values[z] * x[n, col_idx[z]] (the row's indices and values are read
// coalesced; x[n] is small and cached), then a shuffle reduction. Blocks hold
// kWarps rows of one sample. Plain CUDA, no torch headers (see conv_kernels.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "conv_kernels.h"

namespace slimkit {
namespace cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sparse_linear_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ row_ptr,
                         const int64_t* __restrict__ col_idx, const scalar_t* __restrict__ values,
                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, int64_t N, int64_t K,
                         int64_t OUT, int64_t nnz) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (o >= OUT) return;
  // Clamped row range and skipped bad columns: never an out-of-bounds read (conv_kernels.h).
  const int64_t z0 = min(max(row_ptr[o], int64_t(0)), nnz), z1 = min(max(row_ptr[o + 1], z0), nnz);
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const scalar_t* xn = x + n * K;
    scalar_t acc = 0;
    for (int64_t z = z0 + lane; z < z1; z += 32) {
      const int64_t c = col_idx[z];
      if (c >= 0 && c < K) acc += values[z] * xn[c];
    }
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) y[n * OUT + o] = acc + (bias ? bias[o] : scalar_t(0));
  }
}

template <typename scalar_t>
cudaError_t launch_sparse_linear(const scalar_t* x, const int64_t* row_ptr, const int64_t* col_idx,
                                 const scalar_t* values, const scalar_t* bias, scalar_t* y, int64_t N, int64_t K,
                                 int64_t OUT, int64_t nnz, cudaStream_t stream) {
  if (N == 0 || OUT == 0) return cudaSuccess;
  const int64_t blocks = (OUT + kWarps - 1) / kWarps;
  if (blocks > 2147483647LL) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(N < 65535 ? N : 65535));
  sparse_linear_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(x, row_ptr, col_idx, values, bias, y, N, K, OUT, nnz);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sparse_linear_f32(const float* x, const int64_t* row_ptr, const int64_t* col_idx, const float* values,
                              const float* bias, float* y, int64_t N, int64_t K, int64_t OUT, int64_t nnz,
                              cudaStream_t stream) {
  return launch_sparse_linear<float>(x, row_ptr, col_idx, values, bias, y, N, K, OUT, nnz, stream);
}

cudaError_t sparse_linear_f64(const double* x, const int64_t* row_ptr, const int64_t* col_idx, const double* values,
                              const double* bias, double* y, int64_t N, int64_t K, int64_t OUT, int64_t nnz,
                              cudaStream_t stream) {
  return launch_sparse_linear<double>(x, row_ptr, col_idx, values, bias, y, N, K, OUT, nnz, stream);
}

}  // namespace cuda
}  // namespace slimkit
