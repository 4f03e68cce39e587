// Argument checks and gradient post-processing of masked_conv2d, shared by the
// CPU kernel (csrc/cpu/masked_conv.cpp) and the CUDA glue (csrc/cuda/masked_conv_glue.cpp).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace slimkit {
namespace masked_conv {

inline void check_pair(at::IntArrayRef v, const char* name, int64_t min) {
  TORCH_CHECK(v.size() == 2, "masked_conv2d: ", name, " must have 2 elements, got ", v.size());
  TORCH_CHECK(v[0] >= min && v[1] >= min, "masked_conv2d: ", name, " must be >= ", min, ", got ", v);
}

inline void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& input, c10::DeviceType device) {
  TORCH_CHECK(t.defined(), "masked_conv2d: ", name, " is undefined");
  TORCH_CHECK(t.device().type() == device, "masked_conv2d (", c10::DeviceTypeName(device), " kernel): ", name,
              " must be on ", c10::DeviceTypeName(device), ", got ", t.device());
  TORCH_CHECK(t.device() == input.device(), "masked_conv2d: ", name, " is on ", t.device(), " but input is on ",
              input.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "masked_conv2d: ", name, " dtype ", t.scalar_type(),
              " does not match input dtype ", input.scalar_type());
}

inline void check_common(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         c10::DeviceType device) {
  TORCH_CHECK(input.defined() && input.dim() == 4, "masked_conv2d: input must be 4-D (N, C, H, W), got ",
              input.defined() ? input.dim() : 0, "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "masked_conv2d: input must be float32 or float64, got ", input.scalar_type());
  check_tensor(input, "input", input, device);
  check_tensor(weight, "weight", input, device);
  check_tensor(mask, "mask", input, device);
  TORCH_CHECK(weight.dim() == 4, "masked_conv2d: weight must be 4-D (out, in/groups, kh, kw), got ", weight.dim(),
              "-D");
  TORCH_CHECK(mask.sizes() == weight.sizes(), "masked_conv2d: mask shape ", mask.sizes(),
              " does not match weight shape ", weight.sizes());
  TORCH_CHECK(groups >= 1, "masked_conv2d: groups must be >= 1, got ", groups);
  TORCH_CHECK(weight.size(0) >= 1 && weight.size(0) % groups == 0, "masked_conv2d: out_channels ", weight.size(0),
              " must be a positive multiple of groups ", groups);
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, "masked_conv2d: input has ", input.size(1),
              " channels, expected weight.size(1) * groups = ", weight.size(1) * groups);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  for (int d = 0; d < 2; ++d) {
    const int64_t span = dilation[d] * (weight.size(2 + d) - 1) + 1;
    TORCH_CHECK(input.size(2 + d) + 2 * padding[d] >= span, "masked_conv2d: the padded input (",
                input.size(2) + 2 * padding[0], "x", input.size(3) + 2 * padding[1],
                ") is smaller than the dilated kernel (", dilation[0] * (weight.size(2) - 1) + 1, "x",
                dilation[1] * (weight.size(3) - 1) + 1, ")");
  }
}

inline void check_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& mask,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups, c10::DeviceType device) {
  check_common(input, weight, mask, stride, padding, dilation, groups, device);
  if (bias.has_value() && bias->defined()) {
    check_tensor(*bias, "bias", input, device);
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == weight.size(0), "masked_conv2d: bias must have shape (",
                weight.size(0), "), got ", bias->sizes());
  }
}

inline void check_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& mask, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups, c10::DeviceType device) {
  check_common(input, weight, mask, stride, padding, dilation, groups, device);
  check_tensor(grad_out, "grad_out", input, device);
  std::array<int64_t, 4> expected{input.size(0), weight.size(0), 0, 0};
  for (int d = 0; d < 2; ++d)
    expected[2 + d] = (input.size(2 + d) + 2 * padding[d] - dilation[d] * (weight.size(2 + d) - 1) - 1) / stride[d] + 1;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected), "masked_conv2d: grad_out shape ", grad_out.sizes(),
              " does not match the output shape ", at::IntArrayRef(expected));
}

// Masks the weight gradient (in place, it is a fresh tensor; skipped when the
// caller has done it) and turns gradients that were not asked for into empty
// tensors, which is what the schema returns.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_backward(
    std::tuple<at::Tensor, at::Tensor, at::Tensor>& grads, const at::Tensor& input, const at::Tensor& mask,
    std::array<bool, 3> output_mask, bool mask_weight_grad = true) {
  at::Tensor gi = std::get<0>(grads), gw = std::get<1>(grads), gb = std::get<2>(grads);
  if (output_mask[1] && mask_weight_grad) gw.mul_(mask);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  return {output_mask[0] ? gi : empty(), output_mask[1] ? gw : empty(), output_mask[2] ? gb : empty()};
}

}  // namespace masked_conv
}  // namespace slimkit
