// CUDA registrations of sparse_conv2d and sparse_linear: the argument checks shared
// with the CPU kernels (cpu/sparse_conv_common.h, cpu/sparse_linear_common.h), then
// the kernels of sparse_conv.cu / sparse_linear.cu. Built only when torch has CUDA
// (setup.py adds csrc/cuda/*.cpp with the .cu files).
//
// The CSR index values are not checked here: that would copy them to the host and
// synchronise on every call, in the inference hot path. slimkit validates a CSR
// weight once, when it is built (slimkit/ops/csr.py), and the kernels clamp what they
// read, so even a corrupt weight passed to the op directly is never an out-of-bounds
// access (cuda/conv_kernels.h).
#if defined(SLIMKIT_WITH_CUDA)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cpu/sparse_conv_common.h"
#include "cpu/sparse_linear_common.h"
#include "cuda/conv_kernels.h"

namespace slimkit {
namespace {

// What both ops pass their kernel: int64 indices, contiguous input, values and bias.
struct CsrOperands {
  at::Tensor x, rp, ci, vals, bias;
  template <typename scalar_t>
  const scalar_t* bias_ptr() const {
    return bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
  }
};

CsrOperands operands(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                     const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  return {input.contiguous(), row_ptr.to(at::kLong).contiguous(), col_idx.to(at::kLong).contiguous(),
          values.contiguous(), (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor()};
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

at::Tensor sparse_conv2d_cuda(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                              const at::Tensor& values, at::IntArrayRef weight_shape,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const sparse_conv::Args a = sparse_conv::check_args(input, row_ptr, col_idx, values, weight_shape, bias, stride,
                                                      padding, dilation, at::kCUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({a.N, a.OC, a.OH, a.OW}, input.options());
  if (out.numel() == 0) return out;
  const CsrOperands o = operands(input, row_ptr, col_idx, values, bias);
  const cuda::ConvShape s{a.N, a.C, a.H, a.W, a.OC, a.kh, a.kw, a.sh, a.sw, a.ph, a.pw, a.dh, a.dw, a.OH, a.OW,
                          o.ci.numel()};
  const int64_t* rp = o.rp.const_data_ptr<int64_t>();
  const int64_t* ci = o.ci.const_data_ptr<int64_t>();
  const cudaError_t err =
      input.scalar_type() == at::kFloat
          ? cuda::sparse_conv2d_f32(o.x.const_data_ptr<float>(), rp, ci, o.vals.const_data_ptr<float>(),
                                    o.bias_ptr<float>(), out.mutable_data_ptr<float>(), s, stream_of(input))
          : cuda::sparse_conv2d_f64(o.x.const_data_ptr<double>(), rp, ci, o.vals.const_data_ptr<double>(),
                                    o.bias_ptr<double>(), out.mutable_data_ptr<double>(), s, stream_of(input));
  TORCH_CHECK(err == cudaSuccess, "sparse_conv2d: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor sparse_linear_cuda(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                              const at::Tensor& values, at::IntArrayRef weight_shape,
                              const std::optional<at::Tensor>& bias) {
  const sparse_linear::Args a =
      sparse_linear::check_args(input, row_ptr, col_idx, values, weight_shape, bias, at::kCUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({a.N, a.OUT}, input.options());
  if (out.numel() == 0) return out;
  const CsrOperands o = operands(input, row_ptr, col_idx, values, bias);
  const int64_t* rp = o.rp.const_data_ptr<int64_t>();
  const int64_t* ci = o.ci.const_data_ptr<int64_t>();
  const int64_t nnz = o.ci.numel();
  const cudaError_t err =
      input.scalar_type() == at::kFloat
          ? cuda::sparse_linear_f32(o.x.const_data_ptr<float>(), rp, ci, o.vals.const_data_ptr<float>(),
                                    o.bias_ptr<float>(), out.mutable_data_ptr<float>(), a.N, a.K, a.OUT, nnz,
                                    stream_of(input))
          : cuda::sparse_linear_f64(o.x.const_data_ptr<double>(), rp, ci, o.vals.const_data_ptr<double>(),
                                    o.bias_ptr<double>(), out.mutable_data_ptr<double>(), a.N, a.K, a.OUT, nnz,
                                    stream_of(input));
  TORCH_CHECK(err == cudaSuccess, "sparse_linear: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CUDA, m) {
  m.impl("sparse_conv2d", &slimkit::sparse_conv2d_cuda);
  m.impl("sparse_linear", &slimkit::sparse_linear_cuda);
}

#endif  // SLIMKIT_WITH_CUDA
