// CUDA direct sparse convolution (Park et al., ICLR 2017) for sparse_conv2d.
//
// One thread block computes a run of kPositions output positions of one output
// plane (image n, output channel oc); its threads own consecutive positions, so
// the input reads of one nonzero are coalesced along the output row. The row's
// nonzeros are staged through shared memory in chunks, decoded once per chunk to
// (input channel offset, row shift, column shift, value), and every thread adds
// value * x[n, c, oh*sh + r*dh - ph, ow*sw + s*dw - pw] for each of them: the
// work is nnz x positions, never an unfolded input. Plain CUDA, no torch headers
// (see conv_kernels.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "conv_kernels.h"

namespace slimkit {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPositions = kThreads;  // one output position per thread
constexpr int kChunk = 256;           // nonzeros staged per round

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sparse_conv2d_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ row_ptr,
                         const int64_t* __restrict__ col_idx, const scalar_t* __restrict__ values,
                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, ConvShape s) {
  __shared__ int64_t sh_chan[kChunk];
  __shared__ int sh_dr[kChunk];
  __shared__ int sh_ds[kChunk];
  __shared__ scalar_t sh_val[kChunk];

  const int64_t plane = s.OH * s.OW;
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * kPositions + threadIdx.x;
  const bool active = pos < plane;
  const int64_t oh = active ? pos / s.OW : 0;
  const int64_t ow = active ? pos % s.OW : 0;
  const int64_t ih0 = oh * s.sh, iw0 = ow * s.sw;
  const int64_t khw = s.kh * s.kw, K = s.C * khw;

  for (int64_t oc = blockIdx.y; oc < s.OC; oc += gridDim.y) {
    // Clamped, so that a corrupt row_ptr cannot send the block outside col_idx / values.
    const int64_t z0 = min(max(row_ptr[oc], int64_t(0)), s.nnz);
    const int64_t z1 = min(max(row_ptr[oc + 1], z0), s.nnz);
    for (int64_t n = blockIdx.z; n < s.N; n += gridDim.z) {
      const scalar_t* xn = x + n * s.C * s.H * s.W;
      scalar_t acc = bias ? bias[oc] : scalar_t(0);
      for (int64_t base = z0; base < z1; base += kChunk) {
        const int count = static_cast<int>((z1 - base) < kChunk ? (z1 - base) : kChunk);
        __syncthreads();  // the previous chunk is no longer read
        for (int i = threadIdx.x; i < count; i += blockDim.x) {
          const int64_t col = col_idx[base + i];
          const bool ok = col >= 0 && col < K;  // a bad column: a tap that is never inside the input
          const int64_t c = ok ? col / khw : 0, r = ok ? (col / s.kw) % s.kh : 0, q = ok ? col % s.kw : 0;
          sh_chan[i] = c * s.H * s.W;
          sh_dr[i] = ok ? static_cast<int>(r * s.dh - s.ph) : -(1 << 30);
          sh_ds[i] = static_cast<int>(q * s.dw - s.pw);
          sh_val[i] = values[base + i];
        }
        __syncthreads();
        if (active) {
          for (int i = 0; i < count; ++i) {
            const int64_t ih = ih0 + sh_dr[i], iw = iw0 + sh_ds[i];
            if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) acc += sh_val[i] * xn[sh_chan[i] + ih * s.W + iw];
          }
        }
      }
      if (active) y[(n * s.OC + oc) * plane + pos] = acc;
    }
  }
}

template <typename scalar_t>
cudaError_t launch_sparse_conv2d(const scalar_t* x, const int64_t* row_ptr, const int64_t* col_idx,
                                 const scalar_t* values, const scalar_t* bias, scalar_t* y, const ConvShape& s,
                                 cudaStream_t stream) {
  const int64_t plane = s.OH * s.OW;
  if (s.N == 0 || s.OC == 0 || plane == 0) return cudaSuccess;
  const int64_t tiles = (plane + kPositions - 1) / kPositions;
  if (tiles > 2147483647LL) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(s.OC < 65535 ? s.OC : 65535),
                  static_cast<unsigned>(s.N < 65535 ? s.N : 65535));
  sparse_conv2d_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(x, row_ptr, col_idx, values, bias, y, s);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sparse_conv2d_f32(const float* x, const int64_t* row_ptr, const int64_t* col_idx, const float* values,
                              const float* bias, float* y, const ConvShape& s, cudaStream_t stream) {
  return launch_sparse_conv2d<float>(x, row_ptr, col_idx, values, bias, y, s, stream);
}

cudaError_t sparse_conv2d_f64(const double* x, const int64_t* row_ptr, const int64_t* col_idx, const double* values,
                              const double* bias, double* y, const ConvShape& s, cudaStream_t stream) {
  return launch_sparse_conv2d<double>(x, row_ptr, col_idx, values, bias, y, s, stream);
}

}  // namespace cuda
}  // namespace slimkit
