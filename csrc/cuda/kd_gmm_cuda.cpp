// ATen glue of the kd_loss / gmm_prior CUDA kernels: argument checks (shared with the
// CPU glue, cpu/kd_gmm_checks.h), outputs, the current stream, and the final
// reductions (torch ops on the device, so that no scalar is copied to the host except
// for the label range check). Built only
// when torch has CUDA (setup.py, slimkit/ops/backend.py); the kernels themselves
// are in kd_loss.cu / gmm_prior.cu (see kd_gmm_cuda.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "cpu/kd_gmm_checks.h"
#include "cuda/kd_gmm_cuda.h"

namespace slimkit {
namespace cuda {
namespace {

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error: ", cudaGetErrorString(err));
}

// Returns the number of counted labels as a device tensor (0-dim int64), or an undefined tensor.
at::Tensor check_kd(const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
                    double temperature, double alpha, int64_t ignore_index) {
  kd_gmm::check_kd(student, teacher, labels, temperature, alpha, at::kCUDA);
  if (!labels.has_value()) return at::Tensor();
  const at::Tensor& y = *labels;
  const at::Tensor counted = y.ne(ignore_index);
  const bool bad = (counted & (y.lt(0) | y.ge(student.size(1)))).any().item<bool>();
  TORCH_CHECK(!bad, "kd_loss: a label is outside [0, ", student.size(1), ") and is not ignore_index (", ignore_index,
              ")");
  return counted.sum();
}

std::tuple<at::Tensor, at::Tensor> kd_loss_forward_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                        const std::optional<at::Tensor>& labels, double temperature,
                                                        double alpha, int64_t ignore_index) {
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor n_valid = check_kd(student, teacher, labels, temperature, alpha, ignore_index);
  const int64_t N = student.size(0), C = student.size(1);
  const bool kl = !labels.has_value() || alpha > 0, ce = labels.has_value() && alpha < 1;
  const auto acc = kd_gmm::kd_acc_dtype(student.scalar_type());
  at::Tensor stats = at::empty({N, 5}, student.options().dtype(acc));
  at::Tensor row_loss = at::empty({N, 2}, student.options().dtype(acc));
  check_cuda(kd_forward(kd_gmm::kd_dtype(student.scalar_type()), student.const_data_ptr(),
                        teacher.const_data_ptr(), labels.has_value() ? labels->const_data_ptr<int64_t>() : nullptr, N,
                        C, 1.0 / temperature, kl, ce, ignore_index, stats.mutable_data_ptr(),
                        row_loss.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "kd_loss_forward");
  at::Tensor loss = at::zeros({}, student.options().dtype(acc));
  const double w_kl = labels.has_value() ? alpha : 1.0;
  if (kl) loss = loss + row_loss.select(1, 0).sum() * (w_kl * temperature * temperature / static_cast<double>(N));
  if (ce) loss = loss + row_loss.select(1, 1).sum() * (1.0 - alpha) / n_valid.clamp_min(1).to(acc);
  return {loss, stats};
}

at::Tensor kd_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                 const std::optional<at::Tensor>& labels, const at::Tensor& stats, double temperature,
                                 double alpha, int64_t ignore_index) {
  const c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor n_valid = check_kd(student, teacher, labels, temperature, alpha, ignore_index);
  const int64_t N = student.size(0), C = student.size(1);
  const auto acc = kd_gmm::kd_acc_dtype(student.scalar_type());
  kd_gmm::check_kd_backward(grad_loss, stats, student);
  const bool kl = !labels.has_value() || alpha > 0, ce = labels.has_value() && alpha < 1;
  const double w_kl = labels.has_value() ? alpha : 1.0;
  const at::Tensor g = grad_loss.reshape({}).to(acc);
  const at::Tensor ckl = kl ? g * (w_kl * temperature / static_cast<double>(N)) : at::zeros_like(g);
  const at::Tensor cce = ce ? g * (1.0 - alpha) / n_valid.clamp_min(1).to(acc) : at::zeros_like(g);
  const at::Tensor coef = at::stack({ckl, cce}).contiguous();
  at::Tensor grad = at::empty_like(student);
  check_cuda(kd_backward(kd_gmm::kd_dtype(student.scalar_type()), student.const_data_ptr(),
                         teacher.const_data_ptr(), labels.has_value() ? labels->const_data_ptr<int64_t>() : nullptr,
                         N, C, 1.0 / temperature, kl, ce, ignore_index, stats.const_data_ptr(),
                         coef.const_data_ptr(), grad.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "kd_loss_backward");
  return grad;
}

// [mu | log pi - (log 2pi + log_var) / 2 | exp(-log_var) / 2], computed in double on the device.
at::Tensor gmm_params(const at::Tensor& means, const at::Tensor& log_vars, const at::Tensor& mix_logits,
                      at::ScalarType dtype) {
  const at::Tensor lv = log_vars.to(at::kDouble);
  const at::Tensor log_pi = at::log_softmax(mix_logits.to(at::kDouble), 0);
  const at::Tensor c = log_pi - 0.5 * (lv + std::log(2.0 * M_PI));
  const at::Tensor h = 0.5 * at::exp(-lv);
  return at::cat({means.to(at::kDouble), c, h}).to(dtype).contiguous();
}

at::Tensor gmm_prior_forward_cuda(const at::Tensor& weights, const at::Tensor& means, const at::Tensor& log_vars,
                                  const at::Tensor& mix_logits) {
  const c10::cuda::CUDAGuard guard(weights.device());
  kd_gmm::check_gmm(weights, means, log_vars, mix_logits, at::kCUDA);
  const int64_t N = weights.numel(), K = means.size(0);
  if (N == 0) return at::zeros({}, weights.options());
  const at::Tensor params = gmm_params(means, log_vars, mix_logits, weights.scalar_type());
  at::Tensor partial = at::empty({gmm_blocks(N)}, weights.options());
  check_cuda(gmm_forward(weights.scalar_type() == at::kDouble ? Dtype::f64 : Dtype::f32, weights.const_data_ptr(),
                         params.const_data_ptr(), N, K, partial.mutable_data_ptr(),
                         c10::cuda::getCurrentCUDAStream()),
             "gmm_prior_forward");
  return partial.to(at::kDouble).sum().to(weights.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_prior_backward_cuda(const at::Tensor& grad,
                                                                                   const at::Tensor& weights,
                                                                                   const at::Tensor& means,
                                                                                   const at::Tensor& log_vars,
                                                                                   const at::Tensor& mix_logits) {
  const c10::cuda::CUDAGuard guard(weights.device());
  kd_gmm::check_gmm(weights, means, log_vars, mix_logits, at::kCUDA);
  kd_gmm::check_gmm_grad(grad, weights);
  const int64_t N = weights.numel(), K = means.size(0);
  const auto dt = weights.scalar_type();
  at::Tensor grad_w = at::empty_like(weights);
  const at::Tensor g = grad.reshape({}).to(dt).contiguous();
  at::Tensor sums = at::zeros({3 * K}, weights.options().dtype(at::kDouble));
  if (N > 0) {
    const at::Tensor params = gmm_params(means, log_vars, mix_logits, dt);
    at::Tensor partial = at::empty({gmm_blocks(N), 3 * K}, weights.options());
    check_cuda(gmm_backward(dt == at::kDouble ? Dtype::f64 : Dtype::f32, weights.const_data_ptr(),
                            params.const_data_ptr(), N, K, g.const_data_ptr(), grad_w.mutable_data_ptr(),
                            partial.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
               "gmm_prior_backward");
    sums = partial.to(at::kDouble).sum(0);
  }
  const at::Tensor gd = g.to(at::kDouble);
  const at::Tensor R = sums.narrow(0, 0, K), A = sums.narrow(0, K, K), Q = sums.narrow(0, 2 * K, K);
  const at::Tensor pi = at::softmax(mix_logits.to(at::kDouble), 0);
  const at::Tensor gmu = -gd * A;
  const at::Tensor glv = 0.5 * gd * (R - Q);
  const at::Tensor gmix = gd * (pi * static_cast<double>(N) - R);
  return {grad_w, gmu.to(dt), glv.to(dt), gmix.to(dt)};
}

// Loss and the gradients of the loss (upstream gradient 1): the forward and backward kernels back to back.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_prior_value_and_grad_cuda(
    const at::Tensor& weights, const at::Tensor& means, const at::Tensor& log_vars, const at::Tensor& mix_logits) {
  const c10::cuda::CUDAGuard guard(weights.device());
  at::Tensor loss = gmm_prior_forward_cuda(weights, means, log_vars, mix_logits);
  auto grads = gmm_prior_backward_cuda(at::ones({}, weights.options()), weights, means, log_vars, mix_logits);
  return {loss, std::get<0>(grads), std::get<1>(grads), std::get<2>(grads), std::get<3>(grads)};
}

}  // namespace
}  // namespace cuda
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CUDA, m) {
  m.impl("kd_loss_forward", &slimkit::cuda::kd_loss_forward_cuda);
  m.impl("kd_loss_backward", &slimkit::cuda::kd_loss_backward_cuda);
  m.impl("gmm_prior_forward", &slimkit::cuda::gmm_prior_forward_cuda);
  m.impl("gmm_prior_backward", &slimkit::cuda::gmm_prior_backward_cuda);
  m.impl("gmm_prior_value_and_grad", &slimkit::cuda::gmm_prior_value_and_grad_cuda);
}
