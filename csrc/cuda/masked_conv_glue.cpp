// CUDA registrations of masked_conv2d_{forward,backward}: cuDNN convolution (through
// ATen) on weight * mask, with the mask products done by masked_conv.cu. Built only
// when torch has CUDA (setup.py adds csrc/cuda/*.cpp with the .cu files).
#if defined(SLIMKIT_WITH_CUDA)

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cpu/masked_conv_common.h"
#include "cuda/conv_kernels.h"

namespace slimkit {
namespace {

// out = a * mask on the current stream; `out` may be `a` (both contiguous).
void mask_multiply(at::Tensor& out, const at::Tensor& a, const at::Tensor& mask) {
  TORCH_CHECK(out.is_contiguous() && a.is_contiguous() && mask.is_contiguous() && out.numel() == mask.numel());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(a.device().index()).stream();
  cudaError_t err;
  if (a.scalar_type() == at::kFloat)
    err = cuda::mask_multiply_f32(out.data_ptr<float>(), a.const_data_ptr<float>(), mask.const_data_ptr<float>(),
                                  a.numel(), stream);
  else
    err = cuda::mask_multiply_f64(out.data_ptr<double>(), a.const_data_ptr<double>(), mask.const_data_ptr<double>(),
                                  a.numel(), stream);
  TORCH_CHECK(err == cudaSuccess, "masked_conv2d: CUDA mask kernel failed: ", cudaGetErrorString(err));
}

at::Tensor masked_weight(const at::Tensor& weight, const at::Tensor& mask) {
  const at::Tensor w = weight.contiguous(), m = mask.contiguous();
  at::Tensor out = at::empty_like(w);
  mask_multiply(out, w, m);
  return out;
}

at::Tensor masked_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  masked_conv::check_forward(input, weight, mask, bias, stride, padding, dilation, groups, at::kCUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  return at::convolution(input, masked_weight(weight, mask), bias, stride, padding, dilation, false, {0, 0}, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  masked_conv::check_backward(grad_out, input, weight, mask, stride, padding, dilation, groups, at::kCUDA);
  const c10::cuda::CUDAGuard guard(input.device());
  auto grads = at::convolution_backward(grad_out, input, masked_weight(weight, mask),
                                        at::OptionalIntArrayRef(at::IntArrayRef{weight.size(0)}), stride, padding,
                                        dilation, false, {0, 0}, groups, {output_mask[0], output_mask[1], output_mask[2]});
  if (output_mask[1]) {
    at::Tensor gw = std::get<1>(grads).contiguous();
    mask_multiply(gw, gw, mask.contiguous());
    std::get<1>(grads) = gw;
  }
  return masked_conv::finish_backward(grads, input, mask, output_mask, /*mask_weight_grad=*/false);
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CUDA, m) {
  m.impl("masked_conv2d_forward", &slimkit::masked_conv2d_forward_cuda);
  m.impl("masked_conv2d_backward", &slimkit::masked_conv2d_backward_cuda);
}

#endif  // SLIMKIT_WITH_CUDA
