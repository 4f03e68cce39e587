// Plain-C++ argument structs between the glue of kd_loss / gmm_prior (kd_loss.cpp,
// gmm_prior.cpp, and the CUDA glue for Dtype) and their vectorised inner loops, which
// are compiled once per instruction set (isa.h says which and how one is chosen).
// This header must stay free of ATen includes and inline function bodies: it is
// included inside the ISA-specific files, and an inline function compiled there could
// be picked by the linker for every caller (see isa_unit.h); and it is included by
// the CUDA kernels (kd_gmm_cuda.h), which see no torch header.
#pragma once

#include <cstdint>

namespace slimkit {
namespace cpu {

enum class Dtype : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// kd_loss. Rows [r0, r1) of an [N, C] problem. Per row the forward writes 5
// statistics (acc_t = double for f64 inputs, float otherwise):
//   stats[i*5 + 0] max_j s_ij             (raw student logits)
//   stats[i*5 + 1] max_j t_ij             (raw teacher logits; 0 without the KL term)
//   stats[i*5 + 2] log sum_j exp((s_ij - max_s) / T)
//   stats[i*5 + 3] log sum_j exp((t_ij - max_t) / T)   (0 without the KL term)
//   stats[i*5 + 4] log sum_j exp(s_ij - max_s)         (0 without the CE term)
// and row_loss[i*2 + 0] = KL(p_t^T || p_s^T) of the row, row_loss[i*2 + 1] =
// -log p_s(label) (0 for an ignored label or without the CE term).
// The backward writes grad[i, :] = ckl * (p_s^T - p_t^T) + cce * (p_s - onehot(label)).
struct KdArgs {
  Dtype dtype;
  const void* student;
  const void* teacher;
  const int64_t* labels;  // nullptr: no CE term
  int64_t N, C;
  double inv_t;           // 1 / temperature
  bool kl, ce;            // which terms are computed
  int64_t ignore_index;
  void* stats;            // acc_t [N, 5]
  double* row_loss;       // [N, 2], forward only
  void* grad;             // scalar_t [N, C], backward only
  double ckl, cce;        // backward coefficients (grad_loss folded in)
};

// gmm_prior. Weights [w0, w1) of a flat tensor, K <= 64 components, float or
// double. The glue precomputes per component (in the weights' dtype):
//   params[k]       = mu_k
//   params[K + k]   = log pi_k - 0.5 * (log(2 pi) + log_var_k)
//   params[2K + k]  = 0.5 * exp(-log_var_k)
// so that log N_k(w) + log pi_k = params[K+k] - params[2K+k] * (w - mu_k)^2.
// forward: *loss_partial = sum_n -log sum_k pi_k N_k(w_n)          (double)
// backward: grad_w[n] = g * sum_k r_nk (w_n - mu_k) / var_k, and
//   partial[k]      = sum_n r_nk
//   partial[K + k]  = sum_n r_nk (w_n - mu_k) / var_k
//   partial[2K + k] = sum_n r_nk (w_n - mu_k)^2 / var_k              (double)
// with r_nk the responsibilities; the glue turns these into parameter grads.
// With loss != nullptr the backward also computes the forward's *loss, in the
// same pass (the fused value-and-gradient op).
constexpr int64_t kGmmMaxK = 64;

struct GmmArgs {
  Dtype dtype;            // f32 or f64
  const void* weights;
  const void* params;     // [3K] as above
  int64_t N, K;
  void* grad_w;           // backward only
  double g;               // backward only: the incoming gradient of the loss
};

}  // namespace cpu
}  // namespace slimkit
