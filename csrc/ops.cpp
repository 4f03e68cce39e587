// The schemas of slimkit's native ops, defined once for every device.
// Each device registers its kernels in its own TORCH_LIBRARY_IMPL block
// (csrc/cpu/*.cpp, csrc/cuda/*.cu); Python wrappers, autograd and fake
// kernels live in slimkit/ops/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing slimkit._C loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(slimkit, m) {
  // Fused Hinton KD loss. Forward returns (loss, stats): stats is [N, 5] per-row
  // statistics (max_s, max_t, log-sum-exp of the student at T and of the teacher at
  // T around those maxima, and of the student at T=1), all the backward needs, so
  // no N x C temporary is kept between the two.
  m.def("kd_loss_forward(Tensor student, Tensor teacher, Tensor? labels, float temperature, float alpha, int ignore_index) -> (Tensor, Tensor)");
  m.def("kd_loss_backward(Tensor grad_loss, Tensor student, Tensor teacher, Tensor? labels, Tensor stats, float temperature, float alpha, int ignore_index) -> Tensor");
  // Negative log-likelihood of weights under a K-component Gaussian mixture (K <= 64);
  // the backward recomputes the densities and returns the gradients of all four inputs.
  m.def("gmm_prior_forward(Tensor weights, Tensor means, Tensor log_vars, Tensor mix_logits) -> Tensor");
  m.def("gmm_prior_backward(Tensor grad, Tensor weights, Tensor means, Tensor log_vars, Tensor mix_logits) -> (Tensor, Tensor, Tensor, Tensor)");
  // Loss and d loss / d (weights, means, log_vars, mix_logits) in one pass (what training needs).
  m.def("gmm_prior_value_and_grad(Tensor weights, Tensor means, Tensor log_vars, Tensor mix_logits) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Instruction set of the CPU kernels on this call ("avx512", "avx2", "base"): one choice for
  // every op (csrc/cpu/isa.h), so this and sparse_conv2d_cpu_isa always agree.
  m.def("kd_gmm_cpu_isa() -> str");
  // Convolution with weight * mask; the weight gradient is masked.
  m.def("masked_conv2d_forward(Tensor input, Tensor weight, Tensor mask, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  // output_mask selects (grad_input, grad_weight, grad_bias); unselected ones are empty.
  m.def("masked_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor mask, int[2] stride, int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // Direct sparse convolution (Park et al. 2017) with a CSR weight over
  // out_channels x (in_channels * kh * kw); weight_shape = (out_channels, in_channels, kh, kw).
  // Inference only (no autograd).
  m.def("sparse_conv2d(Tensor input, Tensor row_ptr, Tensor col_idx, Tensor values, int[4] weight_shape, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // sparse_conv2d followed by ReLU and a 2x2 / stride-2 max pool (floor mode): the CNN tail
  // conv -> ReLU -> MaxPool2d(2) in one call, output (N, out_channels, OH / 2, OW / 2); the
  // full-size activation stays in the computing core's cache. CPU, inference only.
  m.def("sparse_conv2d_relu_pool(Tensor input, Tensor row_ptr, Tensor col_idx, Tensor values, int[4] weight_shape, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Fully connected layer with a CSR weight over out_features x in_features:
  // input (N, in_features) -> (N, out_features); weight_shape = (out_features, in_features).
  // Inference only (no autograd).
  m.def("sparse_linear(Tensor input, Tensor row_ptr, Tensor col_idx, Tensor values, int[2] weight_shape, Tensor? bias) -> Tensor");
  // A chain of fully connected layers in one call (slimkit's runtime fuses Linear [+ ReLU] runs
  // into it, so a small MLP costs one dispatch instead of one per layer): layer i is CSR
  // (row_ptrs[i], col_idxs[i], values[i]) or dense (dense_weights[i], out x in); an empty
  // (zero-element) tensor stands for "none" (TorchScript cannot trace lists of optional
  // tensors); shapes = [out_0, in_0, out_1, in_1, ...]; relus[i] != 0 applies ReLU after
  // layer i. Inference only (no autograd).
  m.def("sparse_mlp(Tensor input, Tensor[] row_ptrs, Tensor[] col_idxs, Tensor[] values, Tensor[] dense_weights, int[] shapes, Tensor[] biases, int[] relus) -> Tensor");
  // 2x2 / stride-2 max pooling (floor mode, no padding) of a 4-D input, then ReLU when relu is
  // true: what slimkit's runtime runs for conv -> ReLU -> MaxPool2d(2). Inference only (no autograd).
  m.def("max_pool2x2(Tensor input, bool relu) -> Tensor");
  // The same as kd_gmm_cpu_isa (kept for the sparse ops' callers); float32 only, other dtypes run "base".
  m.def("sparse_conv2d_cpu_isa() -> str");
}
