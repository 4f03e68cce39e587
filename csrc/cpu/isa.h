// The CPU kernels of every op (kd_loss, gmm_prior, and the float32 inner loops of
// sparse_conv2d / sparse_linear), compiled once per instruction set:
//
//   base    the baseline ISA of the build   (isa_base.cpp)
//   avx2    AVX2 + FMA                      (isa_avx2.cpp)
//   avx512  AVX-512 F/BW/VL/DQ/CD + FMA     (isa_avx512.cpp)
//
// all three from one translation-unit template (isa_unit.h), and chosen at run time
// by one routine (cpu_kernels(), isa.cpp) for every op:
//   - the widest build that is compiled (SLIMKIT_ISA_KERNELS below) and that ATen
//     would use on this CPU (at::get_cpu_capability: the CPU's best, or
//     ATEN_CPU_CAPABILITY=default|avx2|avx512);
//   - lowered by SLIMKIT_CPU_CAPABILITY=default|avx2 (read on every call, for tests
//     and debugging; "avx512" or unset changes nothing).
//
// Like kd_gmm_kernels.h, this header has no ATen include and no inline function
// body: it is included inside the ISA-specific files.
#pragma once

#include <cstdint>

#include "kd_gmm_kernels.h"

// Whether isa_avx2.cpp / isa_avx512.cpp hold kernels: x86-64, GCC or clang, optimised
// (at -O0 GCC 12 hits an internal compiler error on ATen's vector headers under a
// target pragma: std::tuple of __m256 in vec256_bfloat16.h), not switched off.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    defined(__OPTIMIZE__) && !defined(SLIMKIT_NO_ISA_KERNELS)
#define SLIMKIT_ISA_KERNELS 1
#else
#define SLIMKIT_ISA_KERNELS 0
#endif

namespace slimkit {
namespace cpu {

// What the batch path of sparse_conv2d (sparse_conv_lanes.h) needs of the convolution:
// input C x H x W, stride, padding, the prepared phase planes (Hq x Wq, `plane` = Hq * Wq
// positions, `chan` = sh * sw * plane per channel), output OH x OW.
struct LanesGeometry {
  int64_t C, H, W, sh, sw, ph, pw, Hq, Wq, plane, chan, OH, OW;
};

enum class Isa : int { base = 0, avx2 = 1, avx512 = 2 };

// What one ISA build exports (namespace slimkit::cpu::<isa>). The sparse_* loops are
// float32 (other dtypes run the includer's baseline copy, sparse_conv_dispatch.h);
// their contracts are those of slimkit_sparse_tiles / slimkit_sparse_gather_rows
// (sparse_conv_kernel.h); sparse_tiles_table* are slimkit_sparse_tiles with TableOffsets.
#define SLIMKIT_DECLARE_ISA(ns)                                                                                   \
  namespace ns {                                                                                                  \
  void kd_forward(const KdArgs& a, int64_t r0, int64_t r1);                                                       \
  void kd_backward(const KdArgs& a, int64_t r0, int64_t r1);                                                      \
  void gmm_forward(const GmmArgs& a, int64_t w0, int64_t w1, double* loss);                                       \
  void gmm_backward(const GmmArgs& a, int64_t w0, int64_t w1, double* partial, double* loss);                     \
  int64_t sparse_tile_len();                                                                                      \
  void sparse_tiles(const float* in, const int64_t* seg, int64_t ncb, const int64_t* off, const float* val,       \
                    const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW, \
                    int64_t Wq, float* y, float* stage);                                                          \
  bool sparse_gather_rows(const float* x, const int64_t* rp, const int32_t* ci, const float* val,                 \
                          const float* bias, float* y, int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1); \
  void sparse_tiles_table32(const float* in, const int64_t* seg, int64_t ncb, const int32_t* ci, const int32_t* tab, \
                            const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1,  \
                            int64_t OH, int64_t OW, int64_t Wq, float* y, float* stage);                            \
  void sparse_tiles_table64(const float* in, const int64_t* seg, int64_t ncb, const int64_t* ci, const int32_t* tab, \
                            const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1,  \
                            int64_t OH, int64_t OW, int64_t Wq, float* y, float* stage);                            \
  void sparse_tiles_images32(const float* in, int64_t istride, int64_t M, const int64_t* seg, int64_t ncb,         \
                             const int32_t* ci, const int32_t* tab, const float* val, const float* bias, int64_t oc0, \
                             int64_t oc1, int64_t OH, int64_t OW, int64_t Wq, float* y, int64_t ostride,            \
                             float* stage);                                                                         \
  void sparse_tiles_images64(const float* in, int64_t istride, int64_t M, const int64_t* seg, int64_t ncb,         \
                             const int64_t* ci, const int32_t* tab, const float* val, const float* bias, int64_t oc0, \
                             int64_t oc1, int64_t OH, int64_t OW, int64_t Wq, float* y, int64_t ostride,            \
                             float* stage);                                                                         \
  int64_t sparse_lanes();                                                                                         \
  void sparse_lanes_group(const float* x, int64_t in_image, int64_t M, const LanesGeometry& g, float* buf,        \
                          const int64_t* seg, int64_t ncb, const int32_t* off, const float* val, const float* bias, \
                          int64_t oc0, int64_t oc1, float* y, int64_t ostride, float* stage, float* pooled,        \
                          int64_t pstride);                                                                       \
  bool sparse_columns_in_range32(const int32_t* ci, int64_t nnz, int64_t K);                                       \
  void max_pool2x2(const float* x, float* y, int64_t H, int64_t W, int64_t OH, int64_t OW, bool relu, int64_t p0, \
                   int64_t p1, int64_t x_row, int64_t x_plane);                                                   \
  void sparse_tiles_wide32(const float* in, const int64_t* seg, int64_t ncb, const int32_t* ci, const int32_t* tab, \
                           const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t OH, int64_t Wq,  \
                           float* y, int64_t ld);                                                                 \
  void sparse_tiles_wide64(const float* in, const int64_t* seg, int64_t ncb, const int64_t* ci, const int32_t* tab, \
                           const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t OH, int64_t Wq,  \
                           float* y, int64_t ld);                                                                 \
  bool sparse_columns_in_range64(const int64_t* ci, int64_t nnz, int64_t K);                                       \
  }

SLIMKIT_DECLARE_ISA(base)
SLIMKIT_DECLARE_ISA(avx2)
SLIMKIT_DECLARE_ISA(avx512)

// The kernels of one ISA build, as a table of its functions.
struct CpuKernels {
  Isa isa;
  const char* name;  // "base", "avx2", "avx512"
  decltype(&base::kd_forward) kd_forward;
  decltype(&base::kd_backward) kd_backward;
  decltype(&base::gmm_forward) gmm_forward;
  decltype(&base::gmm_backward) gmm_backward;
  decltype(&base::sparse_tile_len) sparse_tile_len;
  decltype(&base::sparse_tiles) sparse_tiles;
  // The AVX2 build also serves AVX-512 CPUs: its 8-lane gathers were faster than 16-lane
  // ones on the development machine (AMD Zen 4: 0.39 against 0.43 ns per nonzero,
  // 784->300 at batch 1).
  decltype(&base::sparse_gather_rows) sparse_gather_rows;
  // The convolutions' loop: nonzero z reads at tab[ci[z]] (int32 / int64 columns), and the
  // check that every column indexes the table.
  decltype(&base::sparse_tiles_table32) sparse_tiles_table32;
  decltype(&base::sparse_tiles_table64) sparse_tiles_table64;
  decltype(&base::sparse_tiles_images32) sparse_tiles_images32;  // several images of a narrow plane at once
  decltype(&base::sparse_tiles_images64) sparse_tiles_images64;
  // The batch path, one image per vector lane (sparse_conv_lanes.h): the lane count, and one
  // group of images, interleaved, convolved and scattered back (offsets per nonzero).
  decltype(&base::sparse_lanes) sparse_lanes;
  decltype(&base::sparse_lanes_group) sparse_lanes_group;
  decltype(&base::sparse_columns_in_range32) sparse_columns_in_range32;
  decltype(&base::sparse_columns_in_range64) sparse_columns_in_range64;
  decltype(&base::max_pool2x2) max_pool2x2;  // max_pool_kernel.h
  // One image's tiles into its virtual-width output, no stage (the fused conv + pool).
  decltype(&base::sparse_tiles_wide32) sparse_tiles_wide32;
  decltype(&base::sparse_tiles_wide64) sparse_tiles_wide64;
};

// The kernels every op runs on this call (see the top of this file). Ops call it once
// per call and use the returned table throughout, so one call never mixes builds.
const CpuKernels& cpu_kernels();

}  // namespace cpu
}  // namespace slimkit
