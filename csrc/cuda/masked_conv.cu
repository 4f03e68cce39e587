// CUDA part of masked_conv2d: the elementwise mask products. The convolution
// itself is cuDNN's (through at::convolution / at::convolution_backward in
// masked_conv_glue.cpp) on weight * mask, and the weight gradient is masked here.
// Plain CUDA, no torch headers (see conv_kernels.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "conv_kernels.h"

namespace slimkit {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void mask_multiply_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ a,
                                     const scalar_t* __restrict__ mask, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = a[i] * mask[i];
}

template <typename scalar_t>
cudaError_t launch_mask_multiply(scalar_t* out, const scalar_t* a, const scalar_t* mask, int64_t n,
                                 cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  constexpr int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  mask_multiply_kernel<scalar_t><<<grid, threads, 0, stream>>>(out, a, mask, n);
  return cudaGetLastError();
}

}  // namespace

cudaError_t mask_multiply_f32(float* out, const float* a, const float* mask, int64_t n, cudaStream_t stream) {
  return launch_mask_multiply<float>(out, a, mask, n, stream);
}

cudaError_t mask_multiply_f64(double* out, const double* a, const double* mask, int64_t n, cudaStream_t stream) {
  return launch_mask_multiply<double>(out, a, mask, n, stream);
}

}  // namespace cuda
}  // namespace slimkit
