// kd_loss CUDA kernels (Hinton, Vinyals & Dean 2015); formula and CPU version in
// csrc/cpu/kd_loss.cpp. Plain CUDA with raw-pointer launchers (see kd_gmm_cuda.h
// for why); the ATen glue is kd_gmm_cuda.cpp.
//
// Forward: one block per row. Each thread runs an online softmax over its strided
// share of the row (running maxima of the raw student / teacher logits, the sums
//   zs = sum e^b, zt = sum e^a, w = sum e^a (a - b), zs1 = sum e^(s - m_s),
// a = (t - m_t)/T, b = (s - m_s)/T), rescaling only when a maximum grows; the
// thread states are merged with warp shuffles and then across warps through shared
// memory. One read of the row, 5 statistics per row out, KL = w/zt - log zt + log zs.
// Backward: one block per row, every element from the row statistics alone.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kd_gmm_cuda.h"

namespace slimkit {
namespace cuda {
namespace {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

// NaN-propagating max (a NaN logit must give a NaN loss).
template <typename T>
__device__ __forceinline__ T nmax(T a, T b) {
  return (a != a || b != b) ? a + b : (a > b ? a : b);
}

template <typename T>
struct State {  // plain data: it lives in __shared__ memory
  T ms, mt, zs, zt, w, zs1;
  int nonempty;
};

template <bool KL, bool CE, typename T>
__device__ __forceinline__ void merge(State<T>& a, const State<T>& b, T inv_t) {
  if (!b.nonempty) return;
  if (!a.nonempty) {
    a = b;
    return;
  }
  const T Ms = nmax(a.ms, b.ms);
  const T Mt = KL ? nmax(a.mt, b.mt) : T(0);
  T zs = 0, zt = 0, w = 0, zs1 = 0;
  const State<T>* parts[2] = {&a, &b};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const State<T>& x = *parts[i];
    const T raw = Ms - x.ms;
    if (KL) {
      const T ds = raw * inv_t, dt = (Mt - x.mt) * inv_t;
      const T ft = exp_(-dt);
      w += ft * (x.w + (ds - dt) * x.zt);
      zt += ft * x.zt;
      zs += exp_(-ds) * x.zs;
    }
    if (CE) zs1 += exp_(-raw) * x.zs1;
  }
  a.ms = Ms;
  a.mt = Mt;
  a.zs = zs;
  a.zt = zt;
  a.w = w;
  a.zs1 = zs1;
}

// Adds one element (s, t) to a thread's state.
template <bool KL, bool CE, typename T>
__device__ __forceinline__ void push(State<T>& st, T s, T t, T inv_t) {
  if (!st.nonempty) {
    st.ms = s;
    st.mt = KL ? t : T(0);
    st.zs = st.zt = st.zs1 = T(1);
    st.w = T(0);
    st.nonempty = 1;
    return;
  }
  if (s > st.ms || (KL && t > st.mt)) {  // a maximum grew: rescale once
    const T Ms = s > st.ms ? s : st.ms;
    const T Mt = KL ? (t > st.mt ? t : st.mt) : T(0);
    const T raw = Ms - st.ms;
    if (KL) {
      const T ds = raw * inv_t, dt = (Mt - st.mt) * inv_t;
      const T ft = exp_(-dt);
      st.w = ft * (st.w + (ds - dt) * st.zt);
      st.zt *= ft;
      st.zs *= exp_(-ds);
    }
    if (CE) st.zs1 *= exp_(-raw);
    st.ms = Ms;
    st.mt = Mt;
  }
  const T d = s - st.ms;
  if (KL) {
    const T b = d * inv_t, a = (t - st.mt) * inv_t;
    const T es = exp_(b), et = exp_(a);
    st.zs += es;
    st.zt += et;
    st.w += et * (a - b);
  }
  if (CE) st.zs1 += exp_(d);
}

template <typename T>
__device__ __forceinline__ State<T> shfl_down(const State<T>& s, int off) {
  State<T> o;
  o.ms = __shfl_down_sync(0xffffffffu, s.ms, off);
  o.mt = __shfl_down_sync(0xffffffffu, s.mt, off);
  o.zs = __shfl_down_sync(0xffffffffu, s.zs, off);
  o.zt = __shfl_down_sync(0xffffffffu, s.zt, off);
  o.w = __shfl_down_sync(0xffffffffu, s.w, off);
  o.zs1 = __shfl_down_sync(0xffffffffu, s.zs1, off);
  o.nonempty = __shfl_down_sync(0xffffffffu, s.nonempty, off);
  return o;
}

template <bool KL, bool CE, typename T>
__device__ __forceinline__ void warp_merge(State<T>& st, T inv_t) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const State<T> o = shfl_down(st, off);
    merge<KL, CE>(st, o, inv_t);
  }
}

// blockDim.x is a multiple of 32 (<= 1024); the result is valid in thread 0.
template <bool KL, bool CE, typename T>
__device__ State<T> block_merge(State<T> st, T inv_t) {
  __shared__ State<T> warps[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  warp_merge<KL, CE>(st, inv_t);
  if (lane == 0) warps[warp] = st;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    if (lane < nwarps) {
      st = warps[lane];
    } else {
      st.nonempty = 0;
    }
    warp_merge<KL, CE>(st, inv_t);
  }
  return st;
}

template <typename scalar_t, bool KL, bool CE>
__global__ void kd_forward_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                  const int64_t* __restrict__ labels, int64_t C, typename Acc<scalar_t>::type inv_t,
                                  int64_t ignore_index, typename Acc<scalar_t>::type* __restrict__ stats,
                                  typename Acc<scalar_t>::type* __restrict__ row_loss) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t row = blockIdx.x;
  const scalar_t* s = student + row * C;
  const scalar_t* t = KL ? teacher + row * C : nullptr;
  State<acc_t> st;
  st.ms = st.mt = st.zs = st.zt = st.w = st.zs1 = acc_t(0);
  st.nonempty = 0;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    push<KL, CE>(st, to_acc(s[j]), KL ? to_acc(t[j]) : acc_t(0), inv_t);
  }
  st = block_merge<KL, CE>(st, inv_t);
  if (threadIdx.x == 0) {
    const acc_t log_zs = KL ? log_(st.zs) : acc_t(0);
    const acc_t log_zt = KL ? log_(st.zt) : acc_t(0);
    const acc_t log_zs1 = CE ? log_(st.zs1) : acc_t(0);
    acc_t* out = stats + row * 5;
    out[0] = st.ms;
    out[1] = st.mt;
    out[2] = log_zs;
    out[3] = log_zt;
    out[4] = log_zs1;
    row_loss[row * 2] = KL ? st.w / st.zt - log_zt + log_zs : acc_t(0);
    acc_t ce = 0;
    if (CE) {
      const int64_t y = labels[row];
      if (y != ignore_index && y >= 0 && y < C) ce = st.ms + log_zs1 - to_acc(s[y]);
    }
    row_loss[row * 2 + 1] = ce;
  }
}

template <typename scalar_t, bool KL, bool CE>
__global__ void kd_backward_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                                   const int64_t* __restrict__ labels, int64_t C, typename Acc<scalar_t>::type inv_t,
                                   int64_t ignore_index, const typename Acc<scalar_t>::type* __restrict__ stats,
                                   const typename Acc<scalar_t>::type* __restrict__ coef, scalar_t* __restrict__ grad) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t row = blockIdx.x;
  const scalar_t* s = student + row * C;
  const scalar_t* t = KL ? teacher + row * C : nullptr;
  scalar_t* g = grad + row * C;
  const acc_t* st = stats + row * 5;
  const acc_t ms = st[0], mt = st[1], lzs = st[2], lzt = st[3], lzs1 = st[4];
  const acc_t ckl = coef[0];
  acc_t cce = 0;
  int64_t y = -1;
  if (CE) {
    y = labels[row];
    if (y == ignore_index) {
      y = -1;
    } else {
      cce = coef[1];
    }
  }
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    const acc_t d = to_acc(s[j]) - ms;
    acc_t v = 0;
    if (KL) {
      const acc_t ps = exp_(d * inv_t - lzs);
      const acc_t pt = exp_((to_acc(t[j]) - mt) * inv_t - lzt);
      v = ckl * (ps - pt);
    }
    if (CE) v += cce * (exp_(d - lzs1) - (j == y ? acc_t(1) : acc_t(0)));
    g[j] = from_acc<scalar_t>(v);
  }
}

int threads_for(int64_t C) { return C >= 4096 ? 256 : (C >= 512 ? 128 : 32); }

template <typename scalar_t>
cudaError_t forward_t(const void* student, const void* teacher, const int64_t* labels, int64_t N, int64_t C,
                      double inv_t, bool kl, bool ce, int64_t ignore_index, void* stats, void* row_loss,
                      cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (N == 0) return cudaSuccess;
  const auto* s = static_cast<const scalar_t*>(student);
  const auto* t = static_cast<const scalar_t*>(teacher);
  auto* st = static_cast<acc_t*>(stats);
  auto* rl = static_cast<acc_t*>(row_loss);
  const dim3 grid(static_cast<unsigned>(N)), block(threads_for(C));
  const acc_t it = static_cast<acc_t>(inv_t);
  if (kl && ce) {
    kd_forward_kernel<scalar_t, true, true><<<grid, block, 0, stream>>>(s, t, labels, C, it, ignore_index, st, rl);
  } else if (kl) {
    kd_forward_kernel<scalar_t, true, false><<<grid, block, 0, stream>>>(s, t, labels, C, it, ignore_index, st, rl);
  } else {
    kd_forward_kernel<scalar_t, false, true><<<grid, block, 0, stream>>>(s, t, labels, C, it, ignore_index, st, rl);
  }
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t backward_t(const void* student, const void* teacher, const int64_t* labels, int64_t N, int64_t C,
                       double inv_t, bool kl, bool ce, int64_t ignore_index, const void* stats, const void* coef,
                       void* grad, cudaStream_t stream) {
  using acc_t = typename Acc<scalar_t>::type;
  if (N == 0) return cudaSuccess;
  const auto* s = static_cast<const scalar_t*>(student);
  const auto* t = static_cast<const scalar_t*>(teacher);
  const auto* st = static_cast<const acc_t*>(stats);
  const auto* cf = static_cast<const acc_t*>(coef);
  auto* g = static_cast<scalar_t*>(grad);
  const dim3 grid(static_cast<unsigned>(N)), block(threads_for(C));
  const acc_t it = static_cast<acc_t>(inv_t);
  if (kl && ce) {
    kd_backward_kernel<scalar_t, true, true><<<grid, block, 0, stream>>>(s, t, labels, C, it, ignore_index, st, cf, g);
  } else if (kl) {
    kd_backward_kernel<scalar_t, true, false><<<grid, block, 0, stream>>>(s, t, labels, C, it, ignore_index, st, cf, g);
  } else {
    kd_backward_kernel<scalar_t, false, true><<<grid, block, 0, stream>>>(s, t, labels, C, it, ignore_index, st, cf, g);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t kd_forward(Dtype dtype, const void* student, const void* teacher, const int64_t* labels, int64_t N,
                       int64_t C, double inv_t, bool kl, bool ce, int64_t ignore_index, void* stats, void* row_loss,
                       cudaStream_t stream) {
  if (N > 0x7fffffffLL) return cudaErrorInvalidConfiguration;  // one block per row
  switch (dtype) {
    case Dtype::f32:
      return forward_t<float>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, row_loss, stream);
    case Dtype::f64:
      return forward_t<double>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, row_loss, stream);
    case Dtype::f16:
      return forward_t<__half>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, row_loss, stream);
    case Dtype::bf16:
      return forward_t<__nv_bfloat16>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, row_loss,
                                      stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t kd_backward(Dtype dtype, const void* student, const void* teacher, const int64_t* labels, int64_t N,
                        int64_t C, double inv_t, bool kl, bool ce, int64_t ignore_index, const void* stats,
                        const void* coef, void* grad, cudaStream_t stream) {
  if (N > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  switch (dtype) {
    case Dtype::f32:
      return backward_t<float>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, coef, grad, stream);
    case Dtype::f64:
      return backward_t<double>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, coef, grad,
                                stream);
    case Dtype::f16:
      return backward_t<__half>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, coef, grad,
                                stream);
    case Dtype::bf16:
      return backward_t<__nv_bfloat16>(student, teacher, labels, N, C, inv_t, kl, ce, ignore_index, stats, coef,
                                       grad, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace slimkit
