// kd_loss on CPU: the fused Hinton knowledge-distillation loss (Hinton, Vinyals &
// Dean 2015, "Distilling the Knowledge in a Neural Network"),
//
//   loss = w_kl * T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))
//        + (1 - alpha) * mean_{i: y_i != ignore} -log softmax(s_i)[y_i]
//
// with w_kl = alpha when labels are given and 1 otherwise. The forward reads each
// row once (online softmax, kd_loss_kernel.h) and keeps 5 numbers per row; the
// backward reads the row once more and writes the gradient w.r.t. the student
// logits, the only N x C buffer. Blocks of rows are handed out to the threads
// dynamically (kd_gmm_parallel.h); per-row losses are summed in a fixed order in
// double, so the result does not depend on the number of threads.
//
// The kernels are those of the ISA that cpu_kernels() picks (isa.h); the argument
// checks are shared with the CUDA glue (kd_gmm_checks.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "isa.h"
#include "kd_gmm_checks.h"
#include "kd_gmm_parallel.h"

namespace slimkit {
namespace cpu {
namespace {

// Shared checks of forward and backward; returns the number of labels that count
// (labels != ignore_index), validating each label.
int64_t check_inputs(const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
                     double temperature, double alpha, int64_t ignore_index) {
  kd_gmm::check_kd(student, teacher, labels, temperature, alpha, at::kCPU);
  if (!labels.has_value()) return 0;
  const at::Tensor& y = *labels;
  const int64_t* yp = y.const_data_ptr<int64_t>();
  const int64_t N = student.size(0), C = student.size(1);
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t v = yp[i];
    if (v == ignore_index) continue;
    TORCH_CHECK(v >= 0 && v < C, "kd_loss: labels[", i, "] = ", v, " is outside [0, ", C,
                ") and is not ignore_index (", ignore_index, ")");
    ++valid;
  }
  return valid;
}

KdArgs make_args(const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& labels,
                 double temperature, double alpha, int64_t ignore_index) {
  KdArgs a{};
  a.dtype = kd_gmm::kd_dtype(student.scalar_type());
  a.student = student.const_data_ptr();
  a.teacher = teacher.const_data_ptr();
  a.labels = labels.has_value() ? labels->const_data_ptr<int64_t>() : nullptr;
  a.N = student.size(0);
  a.C = student.size(1);
  a.inv_t = 1.0 / temperature;
  // Terms with weight 0 are skipped (labels=None: KL only, alpha ignored).
  a.kl = !labels.has_value() || alpha > 0;
  a.ce = labels.has_value() && alpha < 1;
  a.ignore_index = ignore_index;
  return a;
}

// Runs fn(r0, r1) over all rows in blocks of at least ~16K elements (so that
// handing out a block costs nothing next to it), dynamically over the threads.
template <typename F>
void for_row_blocks(int64_t N, int64_t C, const F& fn) {
  const int64_t g = (int64_t{1} << 14) / (C > 0 ? C : 1);
  const int64_t rows = g > 1 ? g : 1;
  parallel_blocks((N + rows - 1) / rows, [&](int64_t b) {
    const int64_t r0 = b * rows;
    fn(r0, r0 + rows < N ? r0 + rows : N);
  });
}

std::tuple<at::Tensor, at::Tensor> kd_loss_forward_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                       const std::optional<at::Tensor>& labels, double temperature,
                                                       double alpha, int64_t ignore_index) {
  const int64_t n_valid = check_inputs(student, teacher, labels, temperature, alpha, ignore_index);
  KdArgs a = make_args(student, teacher, labels, temperature, alpha, ignore_index);
  const auto acc = kd_gmm::kd_acc_dtype(student.scalar_type());
  at::Tensor stats = at::empty({a.N, 5}, student.options().dtype(acc));
  at::Tensor row_loss = at::empty({a.N, 2}, student.options().dtype(at::kDouble));
  a.stats = stats.mutable_data_ptr();
  a.row_loss = row_loss.mutable_data_ptr<double>();
  const auto forward = cpu_kernels().kd_forward;
  for_row_blocks(a.N, a.C, [&](int64_t r0, int64_t r1) { forward(a, r0, r1); });
  double kl = 0, ce = 0;
  for (int64_t i = 0; i < a.N; ++i) {
    kl += a.row_loss[2 * i];
    ce += a.row_loss[2 * i + 1];
  }
  const double T2 = temperature * temperature;
  double loss = 0;
  if (a.kl) loss += (labels.has_value() ? alpha : 1.0) * T2 * kl / static_cast<double>(a.N);
  if (a.ce && n_valid > 0) loss += (1.0 - alpha) * ce / static_cast<double>(n_valid);
  at::Tensor out = at::empty({}, student.options().dtype(acc));
  if (acc == at::kDouble) {
    *out.mutable_data_ptr<double>() = loss;
  } else {
    *out.mutable_data_ptr<float>() = static_cast<float>(loss);
  }
  return {out, stats};
}

at::Tensor kd_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& student, const at::Tensor& teacher,
                                const std::optional<at::Tensor>& labels, const at::Tensor& stats, double temperature,
                                double alpha, int64_t ignore_index) {
  const int64_t n_valid = check_inputs(student, teacher, labels, temperature, alpha, ignore_index);
  kd_gmm::check_kd_backward(grad_loss, stats, student);
  KdArgs a = make_args(student, teacher, labels, temperature, alpha, ignore_index);
  const double g = grad_loss.item<double>();
  const double w_kl = labels.has_value() ? alpha : 1.0;
  // d(T^2 KL_i / N)/ds_ij = T (p_s - p_t)_j / N at temperature T.
  a.ckl = a.kl ? g * w_kl * temperature / static_cast<double>(a.N) : 0.0;
  a.cce = (a.ce && n_valid > 0) ? g * (1.0 - alpha) / static_cast<double>(n_valid) : 0.0;
  a.stats = const_cast<void*>(stats.const_data_ptr());
  at::Tensor grad = at::empty_like(student);
  a.grad = grad.mutable_data_ptr();
  const auto backward = cpu_kernels().kd_backward;
  for_row_blocks(a.N, a.C, [&](int64_t r0, int64_t r1) { backward(a, r0, r1); });
  return grad;
}

}  // namespace
}  // namespace cpu
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CPU, m) {
  m.impl("kd_loss_forward", &slimkit::cpu::kd_loss_forward_cpu);
  m.impl("kd_loss_backward", &slimkit::cpu::kd_loss_backward_cpu);
}
