// gmm_prior CUDA kernels (Ullrich, Meeds & Welling 2017); formula and CPU version
// in csrc/cpu/gmm_prior.cpp. Plain CUDA with raw-pointer launchers (see
// kd_gmm_cuda.h for why); the ATen glue is kd_gmm_cuda.cpp.
//
// Grid-stride loop over the weights with a fixed grid (gmm_blocks(N), independent
// of the device, so results are reproducible). The 3K parameters sit in shared
// memory; each weight keeps its K log-densities in registers (KMAX-sized arrays,
// fully unrolled, KMAX in {8, 16, 32, 64} picked from K), never N x K in memory.
// Backward: every thread accumulates the 3K gradient sums in registers, then the
// block reduces them (warp shuffles, then across warps through shared memory) and
// writes one [3K] row of partial sums; the glue adds the rows with a deterministic
// torch.sum.
#include <cuda_runtime.h>

#include <cstdint>

#include "kd_gmm_cuda.h"

namespace slimkit {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBlocks = 1024;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__device__ __forceinline__ void load_params(const T* __restrict__ params, int K, T* sp) {
  for (int i = threadIdx.x; i < 3 * K; i += blockDim.x) sp[i] = params[i];
  __syncthreads();
}

// l[k] = log pi_k N_k(x) for k < K, returns max_k l[k] (NaN if x is NaN).
template <typename T, int KMAX>
__device__ __forceinline__ T log_densities(T x, const T* mu, const T* c, const T* h, int K, T* l) {
  T m = -INFINITY;
#pragma unroll
  for (int k = 0; k < KMAX; ++k) {
    if (k < K) {
      const T d = x - mu[k];
      l[k] = c[k] - h[k] * d * d;
      m = (l[k] > m || l[k] != l[k]) ? l[k] : m;
    }
  }
  return m;
}

template <typename T, int KMAX>
__global__ void __launch_bounds__(kThreads) gmm_forward_kernel(const T* __restrict__ w, const T* __restrict__ params,
                                                               int64_t N, int K, T* __restrict__ partial) {
  __shared__ T sp[3 * kGmmMaxK];
  __shared__ T red[kWarps];
  load_params(params, K, sp);
  const T* mu = sp;
  const T* c = sp + K;
  const T* h = sp + 2 * K;
  T acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += stride) {
    T l[KMAX];
    const T m = log_densities<T, KMAX>(w[n], mu, c, h, K, l);
    T S = 0;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      if (k < K) S += exp_(l[k] - m);
    }
    acc += m + log_(S);
  }
  acc = warp_sum(acc);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    T total = 0;
    for (int i = 0; i < kWarps; ++i) total += red[i];
    partial[blockIdx.x] = -total;
  }
}

template <typename T, int KMAX>
__global__ void __launch_bounds__(kThreads) gmm_backward_kernel(const T* __restrict__ w, const T* __restrict__ params,
                                                                int64_t N, int K, const T* __restrict__ g_ptr,
                                                                T* __restrict__ grad_w, T* __restrict__ partial) {
  __shared__ T sp[3 * kGmmMaxK];
  __shared__ T red[kWarps][3 * kGmmMaxK];
  load_params(params, K, sp);
  const T* mu = sp;
  const T* c = sp + K;
  const T* h = sp + 2 * K;
  const T g2 = T(2) * g_ptr[0];
  T R[KMAX], A[KMAX], Q[KMAX];
#pragma unroll
  for (int k = 0; k < KMAX; ++k) R[k] = A[k] = Q[k] = T(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += stride) {
    const T x = w[n];
    T e[KMAX];
    const T m = log_densities<T, KMAX>(x, mu, c, h, K, e);
    T S = 0;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      if (k < K) {
        e[k] = exp_(e[k] - m);
        S += e[k];
      }
    }
    const T inv_s = T(1) / S;
    T gw = 0;
#pragma unroll
    for (int k = 0; k < KMAX; ++k) {
      if (k < K) {
        const T r = e[k] * inv_s;
        const T d = x - mu[k];
        const T t = r * d * h[k];  // r d / (2 var)
        gw += t;
        R[k] += r;
        A[k] += t;
        Q[k] += t * d;
      }
    }
    grad_w[n] = g2 * gw;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < KMAX; ++k) {
    if (k < K) {
      const T r = warp_sum(R[k]), a = warp_sum(A[k]), q = warp_sum(Q[k]);
      if (lane == 0) {
        red[warp][k] = r;
        red[warp][K + k] = T(2) * a;
        red[warp][2 * K + k] = T(2) * q;
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 3 * K; i += blockDim.x) {
    T total = 0;
    for (int v = 0; v < kWarps; ++v) total += red[v][i];
    partial[static_cast<int64_t>(blockIdx.x) * 3 * K + i] = total;
  }
}

template <typename T, int KMAX>
cudaError_t launch_forward(const void* weights, const void* params, int64_t N, int K, void* partial,
                           cudaStream_t stream) {
  gmm_forward_kernel<T, KMAX><<<gmm_blocks(N), kThreads, 0, stream>>>(
      static_cast<const T*>(weights), static_cast<const T*>(params), N, K, static_cast<T*>(partial));
  return cudaGetLastError();
}

template <typename T, int KMAX>
cudaError_t launch_backward(const void* weights, const void* params, int64_t N, int K, const void* g, void* grad_w,
                            void* partial, cudaStream_t stream) {
  gmm_backward_kernel<T, KMAX><<<gmm_blocks(N), kThreads, 0, stream>>>(
      static_cast<const T*>(weights), static_cast<const T*>(params), N, K, static_cast<const T*>(g),
      static_cast<T*>(grad_w), static_cast<T*>(partial));
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_t(const void* weights, const void* params, int64_t N, int K, void* partial, cudaStream_t stream) {
  if (K <= 8) return launch_forward<T, 8>(weights, params, N, K, partial, stream);
  if (K <= 16) return launch_forward<T, 16>(weights, params, N, K, partial, stream);
  if (K <= 32) return launch_forward<T, 32>(weights, params, N, K, partial, stream);
  return launch_forward<T, 64>(weights, params, N, K, partial, stream);
}

template <typename T>
cudaError_t backward_t(const void* weights, const void* params, int64_t N, int K, const void* g, void* grad_w,
                       void* partial, cudaStream_t stream) {
  if (K <= 8) return launch_backward<T, 8>(weights, params, N, K, g, grad_w, partial, stream);
  if (K <= 16) return launch_backward<T, 16>(weights, params, N, K, g, grad_w, partial, stream);
  if (K <= 32) return launch_backward<T, 32>(weights, params, N, K, g, grad_w, partial, stream);
  return launch_backward<T, 64>(weights, params, N, K, g, grad_w, partial, stream);
}

}  // namespace

int gmm_blocks(int64_t N) {
  const int64_t b = (N + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

cudaError_t gmm_forward(Dtype dtype, const void* weights, const void* params, int64_t N, int64_t K, void* partial,
                        cudaStream_t stream) {
  if (K < 1 || K > kGmmMaxK) return cudaErrorInvalidValue;
  if (dtype == Dtype::f64) return forward_t<double>(weights, params, N, static_cast<int>(K), partial, stream);
  if (dtype == Dtype::f32) return forward_t<float>(weights, params, N, static_cast<int>(K), partial, stream);
  return cudaErrorInvalidValue;
}

cudaError_t gmm_backward(Dtype dtype, const void* weights, const void* params, int64_t N, int64_t K, const void* g,
                         void* grad_w, void* partial, cudaStream_t stream) {
  if (K < 1 || K > kGmmMaxK) return cudaErrorInvalidValue;
  if (dtype == Dtype::f64) {
    return backward_t<double>(weights, params, N, static_cast<int>(K), g, grad_w, partial, stream);
  }
  if (dtype == Dtype::f32) {
    return backward_t<float>(weights, params, N, static_cast<int>(K), g, grad_w, partial, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace slimkit
