// max_pool2x2 on CPU: 2x2 / stride-2 max pooling (floor mode, no padding), optionally
// followed by ReLU, in one pass over the input.
//
// slimkit's runtime ran these pools as three elementwise maxima of strided views
// (slimkit/runtime/pool.py) and the ReLU before them as a separate in-place pass over the
// full-size activation: four passes and two temporaries where one read of the input and
// one write of the quarter-size output do. max(relu(a), ...) = relu(max(a, ...)) (ReLU is
// monotone), so the ReLU is applied to the pooled value. NaN propagates as in
// max_pool2d: a window with a NaN gives NaN (and ReLU keeps it). The loop is
// max_pool_kernel.h, float32 in the ISA build that cpu_kernels() picks (isa.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cstdint>

#include "sparse_conv_dispatch.h"

namespace slimkit {
namespace {

at::Tensor max_pool2x2_cpu(const at::Tensor& input, bool relu) {
  TORCH_CHECK(input.defined() && input.dim() == 4, "max_pool2x2: input must be 4-D (N, C, H, W), got ",
              input.defined() ? input.dim() : 0, "-D");
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "max_pool2x2: input must be float32 or float64, got ", input.scalar_type());
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "max_pool2x2: the input plane ", H, "x", W,
              " is smaller than the 2x2 window (max_pool2d would have an empty output)");
  const int64_t OH = H / 2, OW = W / 2;
  const at::Tensor x = input.contiguous();
  at::Tensor out = at::empty({N, C, OH, OW}, input.options());
  const int64_t planes = N * C;
  if (planes == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "max_pool2x2_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = out.mutable_data_ptr<scalar_t>();
    const sparse_dispatch::Kernel<scalar_t> kernel{};  // the ISA chosen once per call
    at::parallel_for(0, planes, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, H * W)),
                     [&](int64_t p0, int64_t p1) { kernel.max_pool(xp, yp, H, W, relu, p0, p1); });
  });
  return out;
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CPU, m) {
  m.impl("max_pool2x2", &slimkit::max_pool2x2_cpu);
}
