// The one run-time choice of instruction set for every CPU kernel (isa.h), and the ops
// that report it.
#include <ATen/Version.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "isa.h"

namespace slimkit {
namespace cpu {
namespace {

#define SLIMKIT_ISA_TABLE(ns, gather)                                                                        \
  CpuKernels {                                                                                               \
    Isa::ns, #ns, &ns::kd_forward, &ns::kd_backward, &ns::gmm_forward, &ns::gmm_backward, &ns::sparse_tile_len, \
        &ns::sparse_tiles, &gather::sparse_gather_rows, &ns::sparse_tiles_table32, &ns::sparse_tiles_table64, \
        &ns::sparse_tiles_images32, &ns::sparse_tiles_images64, &ns::sparse_lanes, &ns::sparse_lanes_group,   \
        &ns::sparse_columns_in_range32,                                           \
        &ns::sparse_columns_in_range64, &ns::max_pool2x2, &ns::sparse_tiles_wide32, &ns::sparse_tiles_wide64 \
  }

#if SLIMKIT_ISA_KERNELS
const CpuKernels kTables[3] = {SLIMKIT_ISA_TABLE(base, base), SLIMKIT_ISA_TABLE(avx2, avx2),
                               SLIMKIT_ISA_TABLE(avx512, avx2)};
#else
const CpuKernels kTables[1] = {SLIMKIT_ISA_TABLE(base, base)};
#endif

// The widest compiled build that ATen would use on this CPU.
Isa best_isa() {
  if (!SLIMKIT_ISA_KERNELS) return Isa::base;
  const std::string cap = at::get_cpu_capability();
  if (cap == "AVX512") return Isa::avx512;
  if (cap == "AVX2") return Isa::avx2;
  return Isa::base;
}

}  // namespace

const CpuKernels& cpu_kernels() {
  static const Isa best = best_isa();
  Isa isa = best;
  if (const char* env = std::getenv("SLIMKIT_CPU_CAPABILITY")) {
    if (std::strcmp(env, "default") == 0) isa = Isa::base;
    else if (std::strcmp(env, "avx2") == 0 && isa > Isa::avx2) isa = Isa::avx2;
  }
  return kTables[static_cast<int>(isa)];
}

}  // namespace cpu
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CatchAll, m) {
  // One choice for every kernel; two names, one per op family, kept for the callers of each.
  m.impl("kd_gmm_cpu_isa", [] { return std::string(slimkit::cpu::cpu_kernels().name); });
  m.impl("sparse_conv2d_cpu_isa", [] { return std::string(slimkit::cpu::cpu_kernels().name); });
}
