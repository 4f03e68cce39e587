// Argument checks of kd_loss and gmm_prior, shared by the CPU glue (kd_loss.cpp,
// gmm_prior.cpp) and the CUDA glue (csrc/cuda/kd_gmm_cuda.cpp), as sparse_conv_common.h
// is for sparse_conv2d: bad input must be a Python error, never an out-of-bounds
// access. Only the label range check is per device (a loop on the CPU, a reduction on
// the GPU); it follows check_kd.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "kd_gmm_kernels.h"

namespace slimkit {
namespace kd_gmm {

inline cpu::Dtype kd_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return cpu::Dtype::f32;
    case at::kDouble:
      return cpu::Dtype::f64;
    case at::kHalf:
      return cpu::Dtype::f16;
    case at::kBFloat16:
      return cpu::Dtype::bf16;
    default:
      TORCH_CHECK(false, "kd_loss: logits must be float32, float64, float16 or bfloat16, got ", t);
  }
}

// The dtype of kd_loss's loss and statistics: float64 for float64 logits, else float32.
inline at::ScalarType kd_acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Everything of kd_loss_forward / _backward's inputs but the label values.
inline void check_kd(const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
                     double temperature, double alpha, c10::DeviceType device) {
  TORCH_CHECK(student.device().type() == device && teacher.device() == student.device(), "kd_loss (",
              c10::DeviceTypeName(device), " kernel): student and teacher logits must be on one ",
              c10::DeviceTypeName(device), " device, got ", student.device(), " and ", teacher.device());
  TORCH_CHECK(student.dim() == 2, "kd_loss: student logits must be 2-D [N, C], got ", student.dim(), "-D ",
              student.sizes());
  TORCH_CHECK(teacher.sizes() == student.sizes(), "kd_loss: teacher logits ", teacher.sizes(),
              " must have the student's shape ", student.sizes());
  TORCH_CHECK(student.size(0) >= 1 && student.size(1) >= 1, "kd_loss: logits must be non-empty, got ",
              student.sizes());
  TORCH_CHECK(teacher.scalar_type() == student.scalar_type(), "kd_loss: teacher dtype ", teacher.scalar_type(),
              " must equal student dtype ", student.scalar_type());
  kd_dtype(student.scalar_type());
  TORCH_CHECK(student.is_contiguous() && teacher.is_contiguous(),
              "kd_loss: logits must be contiguous (call .contiguous())");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "kd_loss: temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(alpha >= 0 && alpha <= 1, "kd_loss: alpha must be in [0, 1], got ", alpha);
  if (!labels.has_value()) return;
  const at::Tensor& y = *labels;
  TORCH_CHECK(y.device() == student.device(), "kd_loss: labels must be on ", student.device(), ", got ", y.device());
  TORCH_CHECK(y.scalar_type() == at::kLong, "kd_loss: labels must be int64, got ", y.scalar_type());
  TORCH_CHECK(y.dim() == 1 && y.size(0) == student.size(0), "kd_loss: labels must have shape [", student.size(0),
              "], got ", y.sizes());
  TORCH_CHECK(y.is_contiguous(), "kd_loss: labels must be contiguous");
}

// kd_loss_backward's grad_loss and the stats that kd_loss_forward returned.
inline void check_kd_backward(const at::Tensor& grad_loss, const at::Tensor& stats, const at::Tensor& student) {
  TORCH_CHECK(grad_loss.numel() == 1 && grad_loss.device() == student.device(),
              "kd_loss_backward: grad_loss must be a one-element tensor on ", student.device(), ", got ",
              grad_loss.sizes(), " on ", grad_loss.device());
  const auto acc = kd_acc_dtype(student.scalar_type());
  TORCH_CHECK(stats.device() == student.device() && stats.scalar_type() == acc && stats.dim() == 2 &&
                  stats.size(0) == student.size(0) && stats.size(1) == 5 && stats.is_contiguous(),
              "kd_loss_backward: stats must be the contiguous [N, 5] ", acc,
              " tensor returned by kd_loss_forward, got ", stats.scalar_type(), " ", stats.sizes());
}

inline void check_gmm(const at::Tensor& weights, const at::Tensor& means, const at::Tensor& log_vars,
                      const at::Tensor& mix_logits, c10::DeviceType device) {
  TORCH_CHECK(weights.device().type() == device, "gmm_prior (", c10::DeviceTypeName(device),
              " kernel): weights must be a ", c10::DeviceTypeName(device), " tensor, got ", weights.device());
  TORCH_CHECK(weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble,
              "gmm_prior: weights must be float32 or float64, got ", weights.scalar_type());
  TORCH_CHECK(weights.is_contiguous(), "gmm_prior: weights must be contiguous (call .contiguous())");
  const at::Tensor* params[3] = {&means, &log_vars, &mix_logits};
  const char* names[3] = {"means", "log_vars", "mix_logits"};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& p = *params[i];
    TORCH_CHECK(p.device() == weights.device(), "gmm_prior: ", names[i], " must be on ", weights.device(),
                " like the weights, got ", p.device());
    TORCH_CHECK(p.scalar_type() == weights.scalar_type(), "gmm_prior: ", names[i], " must have the weights' dtype ",
                weights.scalar_type(), ", got ", p.scalar_type());
    TORCH_CHECK(p.dim() == 1, "gmm_prior: ", names[i], " must be 1-D [K], got shape ", p.sizes());
    TORCH_CHECK(p.size(0) == means.size(0), "gmm_prior: ", names[i], " has ", p.size(0),
                " components but means has ", means.size(0));
  }
  TORCH_CHECK(means.size(0) >= 1 && means.size(0) <= cpu::kGmmMaxK,
              "gmm_prior: the number of components K must be in [1, ", cpu::kGmmMaxK, "], got ", means.size(0));
}

// gmm_prior_backward's incoming gradient.
inline void check_gmm_grad(const at::Tensor& grad, const at::Tensor& weights) {
  TORCH_CHECK(grad.numel() == 1 && grad.device() == weights.device(),
              "gmm_prior_backward: grad must be a one-element tensor on ", weights.device(), ", got ", grad.sizes(),
              " on ", grad.device());
}

}  // namespace kd_gmm
}  // namespace slimkit
