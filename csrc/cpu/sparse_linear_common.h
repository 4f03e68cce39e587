// Argument checks of sparse_linear, shared by the CPU kernel (csrc/cpu/sparse_linear.cpp)
// and the CUDA glue (csrc/cuda/sparse_glue.cpp); the CSR tensor checks are those of
// sparse_conv2d (sparse_conv_common.h, which says where the index values are checked). Bad input must be a Python error, never an
// out-of-bounds access.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "sparse_conv_common.h"

namespace slimkit {
namespace sparse_linear {

struct Args {
  int64_t N, K, OUT;  // input (N, K), weight (OUT, K), output (N, OUT)
};

inline Args check_args(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                       const at::Tensor& values, at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias,
                       c10::DeviceType device) {
  TORCH_CHECK(input.defined() && input.dim() == 2, "sparse_linear: input must be 2-D (batch, in_features), got ",
              input.defined() ? input.dim() : 0, "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "sparse_linear: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.device().type() == device, "sparse_linear (", c10::DeviceTypeName(device),
              " kernel): input must be on ", c10::DeviceTypeName(device), ", got ", input.device());
  TORCH_CHECK(weight_shape.size() == 2, "sparse_linear: weight_shape must be (out_features, in_features), got ",
              weight_shape);
  const int64_t OUT = weight_shape[0], K = weight_shape[1];
  TORCH_CHECK(OUT >= 1 && K >= 1, "sparse_linear: bad weight_shape ", weight_shape);
  TORCH_CHECK(input.size(1) == K, "sparse_linear: input has ", input.size(1), " features, the weight expects ", K);
  sparse_conv::check_csr_tensors("sparse_linear", "out_features", input, row_ptr, col_idx, values, OUT, bias);
  return Args{input.size(0), K, OUT};
}

}  // namespace sparse_linear
}  // namespace slimkit
