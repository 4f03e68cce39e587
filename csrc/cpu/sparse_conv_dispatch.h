// The sparse inner loop that sparse_conv.cpp and sparse_linear.cpp run, which both use
// the register-tiled loop of sparse_conv_kernel.h: float32 runs the build of the ISA
// that cpu_kernels() chooses (isa.h); every other dtype runs the baseline copy compiled
// here, in each includer.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "isa.h"
#include "sparse_conv_kernel.h"
#include "sparse_conv_lanes.h"
#include "max_pool_kernel.h"

// Internal linkage, like the baseline loop it wraps: each includer gets its own copy.
namespace slimkit {
namespace sparse_dispatch {
namespace {

template <typename scalar_t>
struct Kernel {
  const cpu::CpuKernels& isa = cpu::cpu_kernels();  // chosen once per op call
  int64_t tile_len() const {
    if constexpr (std::is_same_v<scalar_t, float>) return isa.sparse_tile_len();
    return slimkit_sparse_tile_len<scalar_t>();
  }
  void tiles(const scalar_t* in, const int64_t* seg, int64_t ncb, const int64_t* off, const scalar_t* val,
             const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW, int64_t Wq,
             scalar_t* y, scalar_t* stage) const {
    if constexpr (std::is_same_v<scalar_t, float>)
      isa.sparse_tiles(in, seg, ncb, off, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y, stage);
    else
      slimkit_sparse_tiles<scalar_t>(in, seg, ncb, PlanOffsets{off}, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y,
                                     stage);
  }
  // The same with nonzero z reading at tab[ci[z]] (TableOffsets); ci's columns must have been
  // checked against the table's length (columns_in_range).
  template <typename index_t>
  void tiles_table(const scalar_t* in, const int64_t* seg, int64_t ncb, const index_t* ci, const int32_t* tab,
                   const scalar_t* val, const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1,
                   int64_t OH, int64_t OW, int64_t Wq, scalar_t* y, scalar_t* stage) const {
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int32_t>)
      isa.sparse_tiles_table32(in, seg, ncb, ci, tab, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y, stage);
    else if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int64_t>)
      isa.sparse_tiles_table64(in, seg, ncb, ci, tab, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y, stage);
    else
      slimkit_sparse_tiles<scalar_t>(in, seg, ncb, TableOffsets<index_t>{ci, tab}, val, bias, oc0, oc1, t0, t1, OH,
                                     OW, Wq, y, stage);
  }
  // M images of a narrow plane at once (slimkit_sparse_tiles_images), columns through tab.
  template <typename index_t>
  void tiles_images(const scalar_t* in, int64_t istride, int64_t M, const int64_t* seg, int64_t ncb,
                    const index_t* ci, const int32_t* tab, const scalar_t* val, const scalar_t* bias, int64_t oc0,
                    int64_t oc1, int64_t OH, int64_t OW, int64_t Wq, scalar_t* y, int64_t ostride,
                    scalar_t* stage) const {
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int32_t>)
      isa.sparse_tiles_images32(in, istride, M, seg, ncb, ci, tab, val, bias, oc0, oc1, OH, OW, Wq, y, ostride, stage);
    else if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int64_t>)
      isa.sparse_tiles_images64(in, istride, M, seg, ncb, ci, tab, val, bias, oc0, oc1, OH, OW, Wq, y, ostride, stage);
    else
      slimkit_sparse_tiles_images<scalar_t>(in, istride, M, seg, ncb, TableOffsets<index_t>{ci, tab}, val, bias, oc0,
                                            oc1, OH, OW, Wq, y, ostride, stage);
  }
  // The batch path (sparse_conv_lanes.h): images per group, and one group's tiles.
  int64_t lanes() const {
    if constexpr (std::is_same_v<scalar_t, float>) return isa.sparse_lanes();
    return at::vec::Vectorized<scalar_t>::size();
  }
  void lanes_group(const scalar_t* x, int64_t in_image, int64_t M, const cpu::LanesGeometry& g, scalar_t* buf,
                   const int64_t* seg, int64_t ncb, const int32_t* off, const scalar_t* val, const scalar_t* bias,
                   int64_t oc0, int64_t oc1, scalar_t* y, int64_t ostride, scalar_t* stage,
                   scalar_t* pooled = nullptr, int64_t pstride = 0) const {
    if constexpr (std::is_same_v<scalar_t, float>)
      isa.sparse_lanes_group(x, in_image, M, g, buf, seg, ncb, off, val, bias, oc0, oc1, y, ostride, stage, pooled,
                             pstride);
    else
      slimkit_sparse_lanes_group<scalar_t>(x, in_image, M, g, buf, seg, ncb, DirectOffsets32{off}, val, bias, oc0,
                                           oc1, y, ostride, stage, pooled, pstride);
  }
  // One image's tiles into its virtual-width output (slimkit_sparse_tiles_wide), columns through tab.
  template <typename index_t>
  void tiles_wide(const scalar_t* in, const int64_t* seg, int64_t ncb, const index_t* ci, const int32_t* tab,
                  const scalar_t* val, const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t OH, int64_t Wq,
                  scalar_t* y, int64_t ld) const {
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int32_t>)
      isa.sparse_tiles_wide32(in, seg, ncb, ci, tab, val, bias, oc0, oc1, OH, Wq, y, ld);
    else if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int64_t>)
      isa.sparse_tiles_wide64(in, seg, ncb, ci, tab, val, bias, oc0, oc1, OH, Wq, y, ld);
    else
      slimkit_sparse_tiles_wide<scalar_t>(in, seg, ncb, TableOffsets<index_t>{ci, tab}, val, bias, oc0, oc1, OH, Wq, y,
                                          ld);
  }
  // 2x2 max pool (then ReLU when relu) of planes [p0, p1) of H x W (max_pool_kernel.h): the op
  // max_pool2x2 and the fused epilogue of sparse_conv2d_relu_pool. The input's rows are x_row
  // and its planes x_plane elements apart (0: W and H * W, a dense tensor).
  void max_pool(const scalar_t* x, scalar_t* y, int64_t H, int64_t W, bool relu, int64_t p0, int64_t p1,
                int64_t x_row = 0, int64_t x_plane = 0) const {
    if (x_row == 0) x_row = W;
    if (x_plane == 0) x_plane = H * W;
    if constexpr (std::is_same_v<scalar_t, float>)
      isa.max_pool2x2(x, y, H, W, H / 2, W / 2, relu, p0, p1, x_row, x_plane);
    else
      slimkit_max_pool2x2<scalar_t>(x, y, H, W, H / 2, W / 2, relu, p0, p1, x_row, x_plane);
  }
  // Whether every column of ci[0 : nnz) lies in [0, K) (any dtype: only indices are read).
  template <typename index_t>
  bool columns_in_range(const index_t* ci, int64_t nnz, int64_t K) const {
    if constexpr (std::is_same_v<index_t, int32_t>)
      return isa.sparse_columns_in_range32(ci, nnz, K);
    else
      return isa.sparse_columns_in_range64(ci, nnz, K);
  }
  // sparse_linear's small-batch rows (float32, int32 columns); false if a column is out of range.
  bool gather_rows(const float* x, const int64_t* rp, const int32_t* ci, const float* val, const float* bias, float* y,
                   int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1) const {
    return isa.sparse_gather_rows(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
  }
};

}  // namespace
}  // namespace sparse_dispatch
}  // namespace slimkit
