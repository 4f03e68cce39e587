// Argument and CSR checks of sparse_conv2d, shared by the CPU kernel
// (csrc/cpu/sparse_conv.cpp) and the CUDA glue (csrc/cuda/sparse_glue.cpp): bad input
// must be a Python error, never an out-of-bounds access. The index values themselves
// are checked on the host only (check_row_ptr here, col_idx while sparse_conv.cpp
// plans): on CUDA that would cost a device-to-host copy and a sync per call, so there
// the weight is validated once when it is built (slimkit/ops/csr.py) and the kernels
// clamp what they read.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace slimkit {
namespace sparse_conv {

struct Args {
  int64_t N, C, H, W, OC, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW;
};

inline void check_pair(at::IntArrayRef v, const char* name, int64_t min) {
  TORCH_CHECK(v.size() == 2, "sparse_conv2d: ", name, " must have 2 elements, got ", v.size());
  TORCH_CHECK(v[0] >= min && v[1] >= min, "sparse_conv2d: ", name, " must be >= ", min, ", got ", v);
}

// The CSR tensors and the bias of a sparse op with `rows` output units (named `rows_name`
// in messages) against its input: devices, ranks, dtypes, layout and sizes.
inline void check_csr_tensors(const char* op, const char* rows_name, const at::Tensor& input,
                              const at::Tensor& row_ptr, const at::Tensor& col_idx, const at::Tensor& values,
                              int64_t rows, const std::optional<at::Tensor>& bias) {
  for (const auto* t : {&row_ptr, &col_idx, &values}) {
    TORCH_CHECK(t->defined(), op, ": CSR tensors must be defined");
    TORCH_CHECK(t->device() == input.device(), op, ": CSR tensors must be on the input's device ", input.device(),
                ", got ", t->device());
    TORCH_CHECK(t->dim() == 1, op, ": CSR tensors must be 1-D, got ", t->dim(), "-D");
    TORCH_CHECK(t->is_contiguous(), op, ": CSR tensors must be contiguous");
  }
  TORCH_CHECK(row_ptr.scalar_type() == at::kInt || row_ptr.scalar_type() == at::kLong, op,
              ": row_ptr must be int32 or int64, got ", row_ptr.scalar_type());
  TORCH_CHECK(col_idx.scalar_type() == at::kInt || col_idx.scalar_type() == at::kLong, op,
              ": col_idx must be int32 or int64, got ", col_idx.scalar_type());
  TORCH_CHECK(values.scalar_type() == input.scalar_type(), op, ": values dtype ", values.scalar_type(),
              " does not match input dtype ", input.scalar_type());
  TORCH_CHECK(row_ptr.numel() == rows + 1, op, ": row_ptr must have ", rows_name, " + 1 = ", rows + 1,
              " entries, got ", row_ptr.numel());
  TORCH_CHECK(col_idx.numel() == values.numel(), op, ": col_idx has ", col_idx.numel(), " entries but values has ",
              values.numel());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == input.device(), op, ": bias must be on the input's device");
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == rows, op, ": bias must have shape (", rows, "), got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": bias dtype ", bias->scalar_type(),
                " does not match input dtype ", input.scalar_type());
  }
}

inline Args check_args(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                       const at::Tensor& values, at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       c10::DeviceType device) {
  TORCH_CHECK(input.defined() && input.dim() == 4, "sparse_conv2d: input must be 4-D (N, C, H, W), got ",
              input.defined() ? input.dim() : 0, "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "sparse_conv2d: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.device().type() == device, "sparse_conv2d (", c10::DeviceTypeName(device),
              " kernel): input must be on ", c10::DeviceTypeName(device), ", got ", input.device());
  TORCH_CHECK(weight_shape.size() == 4, "sparse_conv2d: weight_shape must be (out_channels, in_channels, kh, kw)");
  const int64_t OC = weight_shape[0], Cw = weight_shape[1], kh = weight_shape[2], kw = weight_shape[3];
  TORCH_CHECK(OC >= 1 && Cw >= 1 && kh >= 1 && kw >= 1, "sparse_conv2d: bad weight_shape ", weight_shape);
  TORCH_CHECK(input.size(1) == Cw, "sparse_conv2d: input has ", input.size(1), " channels, the weight expects ", Cw);
  check_csr_tensors("sparse_conv2d", "out_channels", input, row_ptr, col_idx, values, OC, bias);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);

  Args a{};
  a.N = input.size(0); a.C = Cw; a.H = input.size(2); a.W = input.size(3); a.OC = OC; a.kh = kh; a.kw = kw;
  a.sh = stride[0]; a.sw = stride[1]; a.ph = padding[0]; a.pw = padding[1]; a.dh = dilation[0]; a.dw = dilation[1];
  const int64_t Hp = a.H + 2 * a.ph, Wp = a.W + 2 * a.pw;
  TORCH_CHECK(Hp >= a.dh * (kh - 1) + 1 && Wp >= a.dw * (kw - 1) + 1, "sparse_conv2d: the padded input ", Hp, "x",
              Wp, " is smaller than the dilated kernel ", a.dh * (kh - 1) + 1, "x", a.dw * (kw - 1) + 1);
  a.OH = (Hp - a.dh * (kh - 1) - 1) / a.sh + 1;
  a.OW = (Wp - a.dw * (kw - 1) - 1) / a.sw + 1;
  return a;
}

// rp (OC+1) is a host int64 copy of row_ptr; op names the op in messages.
inline void check_row_ptr(const int64_t* rp, int64_t OC, int64_t nnz, const char* op = "sparse_conv2d") {
  TORCH_CHECK(rp[0] == 0, op, ": row_ptr[0] must be 0, got ", rp[0]);
  for (int64_t o = 0; o < OC; ++o)
    TORCH_CHECK(rp[o + 1] >= rp[o], op, ": row_ptr must be non-decreasing (row_ptr[", o + 1, "] = ", rp[o + 1],
                " < row_ptr[", o, "] = ", rp[o], ")");
  TORCH_CHECK(rp[OC] == nnz, op, ": row_ptr[-1] = ", rp[OC], " but there are ", nnz, " nonzeros");
}

}  // namespace sparse_conv
}  // namespace slimkit
