// gmm_prior on CPU: the soft weight-sharing prior of Ullrich, Meeds & Welling
// (2017), "Soft Weight-Sharing for Neural Network Compression",
//
//   loss = -sum_n log sum_k pi_k N(w_n | mu_k, exp(log_var_k)),  pi = softmax(mix_logits),
//
// over a flat weight tensor of any length N and K <= 64 components, float32 or
// float64. Nothing N x K is ever stored: each vector of weights keeps its K
// log-densities in a stack array (gmm_prior_kernel.h). The weights are cut into
// fixed chunks of kChunk; the threads take chunks dynamically
// (kd_gmm_parallel.h, over at::parallel_for), each chunk writes its
// partial sums (loss, or the 3K sums behind the parameter gradients) to its own
// slot, and the slots are added in chunk order in double. The result is thus the
// same for any number of threads.
//
// Ops: gmm_prior_forward (the loss; inference or when no input needs a gradient),
// gmm_prior_backward (recomputes and returns the 4 gradients), and
// gmm_prior_value_and_grad, which autograd uses in training: the loss and its
// gradients from a single pass, the backward then only scales them by the
// incoming gradient.
//
// The kernels are those of the ISA that cpu_kernels() picks (isa.h); the argument
// checks are shared with the CUDA glue (kd_gmm_checks.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "isa.h"
#include "kd_gmm_checks.h"
#include "kd_gmm_parallel.h"

namespace slimkit {
namespace cpu {
namespace {

constexpr int64_t kChunk = 16384;

// [mu | log pi - (log 2pi + log_var) / 2 | exp(-log_var) / 2] in the weights' dtype,
// computed in double; also returns pi (double).
at::Tensor make_params(const at::Tensor& means, const at::Tensor& log_vars, const at::Tensor& mix_logits,
                       at::ScalarType dtype, std::vector<double>* pi_out) {
  const int64_t K = means.size(0);
  const at::Tensor mu = means.to(at::kDouble).contiguous();
  const at::Tensor lv = log_vars.to(at::kDouble).contiguous();
  const at::Tensor ml = mix_logits.to(at::kDouble).contiguous();
  const double* mup = mu.const_data_ptr<double>();
  const double* lvp = lv.const_data_ptr<double>();
  const double* mlp = ml.const_data_ptr<double>();
  double mmax = mlp[0];
  for (int64_t k = 1; k < K; ++k) mmax = mlp[k] > mmax ? mlp[k] : mmax;
  double z = 0;
  for (int64_t k = 0; k < K; ++k) z += std::exp(mlp[k] - mmax);
  const double lse = mmax + std::log(z);
  const double log2pi = std::log(2.0 * M_PI);
  at::Tensor params = at::empty({3 * K}, means.options().dtype(at::kDouble));
  double* p = params.mutable_data_ptr<double>();
  if (pi_out) pi_out->resize(K);
  for (int64_t k = 0; k < K; ++k) {
    const double log_pi = mlp[k] - lse;
    p[k] = mup[k];
    p[K + k] = log_pi - 0.5 * (log2pi + lvp[k]);
    p[2 * K + k] = 0.5 * std::exp(-lvp[k]);
    if (pi_out) (*pi_out)[k] = std::exp(log_pi);
  }
  return params.to(dtype);
}

GmmArgs make_args(const at::Tensor& weights, const at::Tensor& params, int64_t K) {
  GmmArgs a{};
  a.dtype = weights.scalar_type() == at::kDouble ? Dtype::f64 : Dtype::f32;
  a.weights = weights.const_data_ptr();
  a.params = params.const_data_ptr();
  a.N = weights.numel();
  a.K = K;
  return a;
}

at::Tensor gmm_prior_forward_cpu(const at::Tensor& weights, const at::Tensor& means, const at::Tensor& log_vars,
                                 const at::Tensor& mix_logits) {
  kd_gmm::check_gmm(weights, means, log_vars, mix_logits, at::kCPU);
  const int64_t K = means.size(0);
  const at::Tensor params = make_params(means, log_vars, mix_logits, weights.scalar_type(), nullptr);
  const GmmArgs a = make_args(weights, params, K);
  const int64_t n_chunks = (a.N + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks, 0.0);
  const auto forward = cpu_kernels().gmm_forward;
  parallel_blocks(n_chunks, [&](int64_t c) {
    const int64_t w1 = (c + 1) * kChunk < a.N ? (c + 1) * kChunk : a.N;
    forward(a, c * kChunk, w1, &partial[c]);
  });
  double loss = 0;
  for (double v : partial) loss += v;
  at::Tensor out = at::empty({}, weights.options());
  if (weights.scalar_type() == at::kDouble) {
    *out.mutable_data_ptr<double>() = loss;
  } else {
    *out.mutable_data_ptr<float>() = static_cast<float>(loss);
  }
  return out;
}

// Gradients (scaled by g) and, with want_loss, the loss too, from one pass over the weights.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gradients(double g, const at::Tensor& weights,
                                                                                 const at::Tensor& means,
                                                                                 const at::Tensor& log_vars,
                                                                                 const at::Tensor& mix_logits,
                                                                                 bool want_loss) {
  const int64_t K = means.size(0);
  std::vector<double> pi;
  const at::Tensor params = make_params(means, log_vars, mix_logits, weights.scalar_type(), &pi);
  GmmArgs a = make_args(weights, params, K);
  a.g = g;
  at::Tensor grad_w = at::empty_like(weights);
  a.grad_w = grad_w.mutable_data_ptr();
  const int64_t n_chunks = (a.N + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks * 3 * K, 0.0);
  std::vector<double> loss_partial(want_loss ? n_chunks : 0, 0.0);
  const auto backward = cpu_kernels().gmm_backward;
  parallel_blocks(n_chunks, [&](int64_t c) {
    const int64_t w1 = (c + 1) * kChunk < a.N ? (c + 1) * kChunk : a.N;
    backward(a, c * kChunk, w1, &partial[c * 3 * K], want_loss ? &loss_partial[c] : nullptr);
  });
  std::vector<double> sums(3 * K, 0.0);
  for (int64_t c = 0; c < n_chunks; ++c) {
    for (int64_t j = 0; j < 3 * K; ++j) sums[j] += partial[c * 3 * K + j];
  }
  at::Tensor gm = at::empty({K}, means.options().dtype(at::kDouble));
  at::Tensor glv = at::empty({K}, means.options().dtype(at::kDouble));
  at::Tensor gmix = at::empty({K}, means.options().dtype(at::kDouble));
  double* gmp = gm.mutable_data_ptr<double>();
  double* glvp = glv.mutable_data_ptr<double>();
  double* gmixp = gmix.mutable_data_ptr<double>();
  const double N = static_cast<double>(a.N);
  for (int64_t k = 0; k < K; ++k) {
    const double R = sums[k], A = sums[K + k], Q = sums[2 * K + k];
    gmp[k] = -g * A;                  // d/dmu_k:      -sum_n r_nk (w_n - mu_k) / var_k
    glvp[k] = 0.5 * g * (R - Q);      // d/dlog_var_k: sum_n r_nk (1 - (w_n - mu_k)^2 / var_k) / 2
    gmixp[k] = g * (N * pi[k] - R);   // d/dmix_k:     sum_n (pi_k - r_nk)
  }
  const auto dt = weights.scalar_type();
  at::Tensor loss;
  if (want_loss) {
    double total = 0;
    for (double v : loss_partial) total += v;
    loss = at::empty({}, weights.options());
    if (dt == at::kDouble) {
      *loss.mutable_data_ptr<double>() = total;
    } else {
      *loss.mutable_data_ptr<float>() = static_cast<float>(total);
    }
  }
  return {loss, grad_w, gm.to(dt), glv.to(dt), gmix.to(dt)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_prior_backward_cpu(const at::Tensor& grad,
                                                                                  const at::Tensor& weights,
                                                                                  const at::Tensor& means,
                                                                                  const at::Tensor& log_vars,
                                                                                  const at::Tensor& mix_logits) {
  kd_gmm::check_gmm(weights, means, log_vars, mix_logits, at::kCPU);
  kd_gmm::check_gmm_grad(grad, weights);
  auto [loss, gw, gm, glv, gmix] = gradients(grad.item<double>(), weights, means, log_vars, mix_logits, false);
  return {gw, gm, glv, gmix};
}

// loss and its gradients w.r.t. all four inputs in one pass (K exponentials per
// weight instead of 2K for forward + backward).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_prior_value_and_grad_cpu(
    const at::Tensor& weights, const at::Tensor& means, const at::Tensor& log_vars, const at::Tensor& mix_logits) {
  kd_gmm::check_gmm(weights, means, log_vars, mix_logits, at::kCPU);
  return gradients(1.0, weights, means, log_vars, mix_logits, true);
}

}  // namespace
}  // namespace cpu
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CPU, m) {
  m.impl("gmm_prior_forward", &slimkit::cpu::gmm_prior_forward_cpu);
  m.impl("gmm_prior_backward", &slimkit::cpu::gmm_prior_backward_cpu);
  m.impl("gmm_prior_value_and_grad", &slimkit::cpu::gmm_prior_value_and_grad_cpu);
}
