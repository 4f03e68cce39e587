// Launchers of the kd_loss / gmm_prior CUDA kernels (kd_loss.cu, gmm_prior.cu).
//
// Why the split: the CPU-only torch wheel ships incomplete CUDA headers
// (c10/cuda/CUDAMacros.h includes c10/cuda/impl/cuda_cmake_macros.h, which is not
// in the wheel), so nothing that includes ATen's CUDA headers compiles without a
// CUDA build of torch. The .cu files therefore hold plain CUDA kernels and these
// launchers, which take raw pointers and a stream and include only the CUDA
// runtime; they compile with nvcc against any torch (.ci/compile_cuda.sh checks
// that on every CI run). The ATen glue (argument checks, allocation, the current
// stream, TORCH_LIBRARY_IMPL(slimkit, CUDA, ...)) is kd_gmm_cuda.cpp, built only
// when torch has CUDA (setup.py, slimkit/ops/backend.py).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cpu/kd_gmm_kernels.h"  // plain C++: Dtype and kGmmMaxK, shared with the CPU kernels

namespace slimkit {
namespace cuda {

using cpu::Dtype;
using cpu::kGmmMaxK;

// kd_loss. acc_t is double for f64 logits and float otherwise. One block per row.
// forward writes stats[N, 5] (as in csrc/cpu/kd_gmm_kernels.h) and row_loss[N, 2]
// (KL of the row, -log p_s(label) or 0), both acc_t.
cudaError_t kd_forward(Dtype dtype, const void* student, const void* teacher, const int64_t* labels, int64_t N,
                       int64_t C, double inv_t, bool kl, bool ce, int64_t ignore_index, void* stats, void* row_loss,
                       cudaStream_t stream);

// backward: grad[i, :] = coef[0] * (p_s^T - p_t^T) + coef[1] * (p_s - onehot(label_i)) for rows whose label
// is not ignored (coef: 2 acc_t on the device, so that grad_loss never has to be copied to the host).
cudaError_t kd_backward(Dtype dtype, const void* student, const void* teacher, const int64_t* labels, int64_t N,
                        int64_t C, double inv_t, bool kl, bool ce, int64_t ignore_index, const void* stats,
                        const void* coef, void* grad, cudaStream_t stream);

// gmm_prior, f32 or f64 (acc_t = the weights' dtype). params[3K] as in csrc/cpu/kd_gmm_kernels.h.
// Grid-stride over the weights with gmm_blocks(N) blocks; each block writes its partial sums:
// forward partial[b] = sum over its weights of -log p(w); backward partial[b, 3K] = the block's
// (sum r, sum r d / var, sum r d^2 / var) per component, and grad_w = g * sum_k r_k d_k / var_k
// (g: the incoming gradient, one element on the device).
int gmm_blocks(int64_t N);
cudaError_t gmm_forward(Dtype dtype, const void* weights, const void* params, int64_t N, int64_t K, void* partial,
                        cudaStream_t stream);
cudaError_t gmm_backward(Dtype dtype, const void* weights, const void* params, int64_t N, int64_t K, const void* g,
                         void* grad_w, void* partial, cudaStream_t stream);

}  // namespace cuda
}  // namespace slimkit
