// Run-time choice of the sparse inner loop's build (baseline, AVX2, AVX-512) for
// sparse_conv.cpp and sparse_linear.cpp, which both run the register-tiled loop of
// sparse_conv_kernel.h: the baseline copy is compiled here, in each includer (every
// dtype); the float32 AVX2 / AVX-512 copies live in sparse_conv_avx2.cpp /
// sparse_conv_avx512.cpp behind sparse_conv_isa.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "sparse_conv_isa.h"
#include "sparse_conv_kernel.h"

// Internal linkage, like the baseline loop it wraps: each includer gets its own copy.
namespace slimkit {
namespace sparse_dispatch {
namespace {

enum class Isa { base = 0, avx2 = 1, avx512 = 2 };

// The widest kernel that is compiled, that ATen would use on this CPU (at::get_cpu_capability:
// the CPU's best, or ATEN_CPU_CAPABILITY), and that SLIMKIT_CPU_CAPABILITY (default, avx2,
// avx512; read per call, for tests and debugging) does not rule out.
Isa select_isa() {
  static const Isa best = [] {
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512" && sparse_conv_isa::avx512_compiled()) return Isa::avx512;
    if ((cap == "AVX512" || cap == "AVX2") && sparse_conv_isa::avx2_compiled()) return Isa::avx2;
    return Isa::base;
  }();
  Isa isa = best;
  if (const char* env = std::getenv("SLIMKIT_CPU_CAPABILITY")) {
    if (std::strcmp(env, "default") == 0) isa = Isa::base;
    else if (std::strcmp(env, "avx2") == 0 && isa > Isa::avx2) isa = Isa::avx2;
  }
  return isa;
}

const char* isa_name(Isa isa) {
  return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "base";
}

template <typename scalar_t>
struct Kernel {
  Isa isa;  // base for every dtype but float32
  int64_t tile_len() const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (isa == Isa::avx512) return sparse_conv_isa::tile_len_avx512();
      if (isa == Isa::avx2) return sparse_conv_isa::tile_len_avx2();
    }
    return slimkit_sparse_tile_len<scalar_t>();
  }
  void tiles(const scalar_t* in, const int64_t* seg, int64_t ncb, const int64_t* off, const scalar_t* val,
             const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW, int64_t Wq,
             scalar_t* y, scalar_t* stage) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (isa == Isa::avx512)
        return sparse_conv_isa::tiles_avx512(in, seg, ncb, off, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y,
                                             stage);
      if (isa == Isa::avx2)
        return sparse_conv_isa::tiles_avx2(in, seg, ncb, off, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y,
                                           stage);
    }
    slimkit_sparse_tiles<scalar_t>(in, seg, ncb, off, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y, stage);
  }
  // sparse_linear's small-batch rows (float32, int32 columns); false if a column is out of range.
  // The AVX2 build also serves AVX-512 CPUs: its 8-lane gathers were faster than 16-lane ones on
  // the development machine (AMD Zen 4: 0.39 against 0.43 ns per nonzero, 784->300 at batch 1).
  bool gather_rows(const float* x, const int64_t* rp, const int32_t* ci, const float* val, const float* bias, float* y,
                   int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1) const {
    if (isa == Isa::avx512 || isa == Isa::avx2) return sparse_conv_isa::gather_rows_avx2(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
    return slimkit_sparse_gather_rows<float>(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
  }
};

}  // namespace
}  // namespace sparse_dispatch
}  // namespace slimkit
