// CUDA registration of sparse_conv2d: argument and CSR checks (shared with the CPU
// kernel), then the direct sparse kernel of sparse_conv.cu. Built only when torch
// has CUDA (setup.py adds csrc/cuda/*.cpp with the .cu files).
//
// The CSR indices are validated on the host (one small device-to-host copy of
// row_ptr and col_idx per call) so that a corrupt weight is a Python error, never
// an out-of-bounds read on the device.
#if defined(SLIMKIT_WITH_CUDA)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cpu/sparse_conv_common.h"
#include "cuda/conv_kernels.h"

namespace slimkit {
namespace {

at::Tensor sparse_conv2d_cuda(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                              const at::Tensor& values, at::IntArrayRef weight_shape,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation) {
  const sparse_conv::Args a = sparse_conv::check_args(input, row_ptr, col_idx, values, weight_shape, bias, stride,
                                                      padding, dilation, at::kCUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor rp = row_ptr.to(at::kLong).contiguous();
  const at::Tensor ci = col_idx.to(at::kLong).contiguous();
  {
    const at::Tensor rp_host = rp.cpu(), ci_host = ci.cpu();
    sparse_conv::check_csr(rp_host.const_data_ptr<int64_t>(), ci_host.const_data_ptr<int64_t>(), a.OC, ci.numel(),
                           a.C * a.kh * a.kw);
  }
  at::Tensor out = at::empty({a.N, a.OC, a.OH, a.OW}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous(), vals = values.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const cuda::ConvShape s{a.N, a.C, a.H, a.W, a.OC, a.kh, a.kw, a.sh, a.sw, a.ph, a.pw, a.dh, a.dw, a.OH, a.OW};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index()).stream();
  cudaError_t err;
  if (input.scalar_type() == at::kFloat)
    err = cuda::sparse_conv2d_f32(x.const_data_ptr<float>(), rp.const_data_ptr<int64_t>(), ci.const_data_ptr<int64_t>(),
                                  vals.const_data_ptr<float>(), b.defined() ? b.const_data_ptr<float>() : nullptr,
                                  out.mutable_data_ptr<float>(), s, stream);
  else
    err = cuda::sparse_conv2d_f64(x.const_data_ptr<double>(), rp.const_data_ptr<int64_t>(),
                                  ci.const_data_ptr<int64_t>(), vals.const_data_ptr<double>(),
                                  b.defined() ? b.const_data_ptr<double>() : nullptr, out.mutable_data_ptr<double>(),
                                  s, stream);
  TORCH_CHECK(err == cudaSuccess, "sparse_conv2d: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CUDA, m) {
  m.impl("sparse_conv2d", &slimkit::sparse_conv2d_cuda);
}

#endif  // SLIMKIT_WITH_CUDA
