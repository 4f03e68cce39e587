// The inner loop of max_pool2x2 (max_pool.cpp): planes [p0, p1) of an (N*C, H, W) input into
// (N*C, H/2, W/2) (the input's rows x_row and its planes x_plane elements apart: W and H*W for a
// tensor, wider for the fused conv + pool's virtual-width output), each output the NaN-propagating maximum of its 2x2 window, then ReLU when
// `relu`. Vectorised: two input rows of 2*VL values -> their elementwise maximum ->
// deinterleaved into even and odd columns -> one vector of VL outputs. Included by
// isa_unit.h (float32, one build per ISA) and max_pool.cpp (the baseline copy, every
// dtype); internal linkage like sparse_conv_kernel.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace {

template <typename scalar_t>
inline void slimkit_max_pool2x2(const scalar_t* x, scalar_t* y, int64_t H, int64_t W, int64_t OH, int64_t OW,
                                bool relu, int64_t p0, int64_t p1, int64_t x_row, int64_t x_plane) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  const Vec zero(scalar_t(0));
  // Short rows (the 7-, 3- and 1-wide outputs of small planes) would be all tail. So every
  // output row is written in whole vectors, the last one running past the row's end: its
  // surplus lanes hold garbage from the rows that follow and land on outputs that this loop
  // writes later (rows and planes go in increasing order), so they are overwritten. Reads
  // past the row's end stay inside the range's input. Only where a vector would read past
  // [p0, p1)'s input or write past its output (the last rows of the range: another thread's
  // outputs, or the end of the tensor) does the row end lane by lane.
  const scalar_t* x_end = x + p1 * x_plane;
  const scalar_t* y_end = y + p1 * OH * OW;
  for (int64_t p = p0; p < p1; ++p) {  // plane p = (image, channel)
    const scalar_t* xp = x + p * x_plane;
    scalar_t* yp = y + p * OH * OW;
    for (int64_t i = 0; i < OH; ++i) {
      const scalar_t* r0 = xp + 2 * i * x_row;
      const scalar_t* r1 = r0 + x_row;
      scalar_t* out = yp + i * OW;
      int64_t j = 0;
      for (; j < OW; j += VL) {
        if (j + VL > OW && (out + j + VL > y_end || r1 + 2 * (j + VL) > x_end)) break;
        const Vec a = at::vec::maximum(Vec::loadu(r0 + 2 * j), Vec::loadu(r1 + 2 * j));
        const Vec b = at::vec::maximum(Vec::loadu(r0 + 2 * j + VL), Vec::loadu(r1 + 2 * j + VL));
        const auto [even, odd] = at::vec::deinterleave2(a, b);
        const Vec m = at::vec::maximum(even, odd);
        (relu ? at::vec::maximum(m, zero) : m).store(out + j);
      }
      for (; j < OW; ++j) {  // branch-free: on random data the compares of a NaN-aware max mispredict
        const scalar_t a = r0[2 * j], b = r0[2 * j + 1], c = r1[2 * j], d = r1[2 * j + 1];
        scalar_t m = std::max(std::max(a, b), std::max(c, d));
        if (relu) m = std::max(m, scalar_t(0));
        const bool nan = (a != a) | (b != b) | (c != c) | (d != d);
        out[j] = nan ? std::numeric_limits<scalar_t>::quiet_NaN() : m;
      }
    }
  }
}

}  // namespace

#if defined(SLIMKIT_ISA_NS)
namespace slimkit {
namespace cpu {
namespace SLIMKIT_ISA_NS {

void max_pool2x2(const float* x, float* y, int64_t H, int64_t W, int64_t OH, int64_t OW, bool relu, int64_t p0,
                 int64_t p1, int64_t x_row, int64_t x_plane) {
  slimkit_max_pool2x2<float>(x, y, H, W, OH, OW, relu, p0, p1, x_row, x_plane);
}

}  // namespace SLIMKIT_ISA_NS
}  // namespace cpu
}  // namespace slimkit
#endif
