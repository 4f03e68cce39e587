// CUDA registration of sparse_linear: argument and CSR checks (shared with the CPU
// kernel), then the warp-per-row kernel of sparse_linear.cu. Built only when torch has
// CUDA (setup.py adds csrc/cuda/*.cpp with the .cu files).
//
// The CSR indices are validated on the host (one small device-to-host copy of row_ptr
// and col_idx per call) so that a corrupt weight is a Python error, never an
// out-of-bounds read on the device.
#if defined(SLIMKIT_WITH_CUDA)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cpu/sparse_linear_common.h"
#include "cuda/conv_kernels.h"

namespace slimkit {
namespace {

at::Tensor sparse_linear_cuda(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                              const at::Tensor& values, at::IntArrayRef weight_shape,
                              const std::optional<at::Tensor>& bias) {
  const sparse_linear::Args a =
      sparse_linear::check_args(input, row_ptr, col_idx, values, weight_shape, bias, at::kCUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor rp = row_ptr.to(at::kLong).contiguous();
  const at::Tensor ci = col_idx.to(at::kLong).contiguous();
  {
    const at::Tensor rp_host = rp.cpu(), ci_host = ci.cpu();
    sparse_conv::check_csr(rp_host.const_data_ptr<int64_t>(), ci_host.const_data_ptr<int64_t>(), a.OUT, ci.numel(),
                           a.K, "sparse_linear", "in_features");
  }
  at::Tensor out = at::empty({a.N, a.OUT}, input.options());
  if (out.numel() == 0) return out;
  const at::Tensor x = input.contiguous(), vals = values.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index()).stream();
  cudaError_t err;
  if (input.scalar_type() == at::kFloat)
    err = cuda::sparse_linear_f32(x.const_data_ptr<float>(), rp.const_data_ptr<int64_t>(),
                                  ci.const_data_ptr<int64_t>(), vals.const_data_ptr<float>(),
                                  b.defined() ? b.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(),
                                  a.N, a.K, a.OUT, stream);
  else
    err = cuda::sparse_linear_f64(x.const_data_ptr<double>(), rp.const_data_ptr<int64_t>(),
                                  ci.const_data_ptr<int64_t>(), vals.const_data_ptr<double>(),
                                  b.defined() ? b.const_data_ptr<double>() : nullptr, out.mutable_data_ptr<double>(),
                                  a.N, a.K, a.OUT, stream);
  TORCH_CHECK(err == cudaSuccess, "sparse_linear: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CUDA, m) {
  m.impl("sparse_linear", &slimkit::sparse_linear_cuda);
}

#endif  // SLIMKIT_WITH_CUDA
