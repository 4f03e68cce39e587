// The batch path of the direct sparse convolution: one image per vector lane.
//
// sparse_conv_kernel.h vectorises over the flat output positions of one image, on the
// padded width Wq. On the small planes of a CNN's late layers most of those lanes are
// padding: a 7x7 output computed on width 9 is 49 real positions in 64 lanes, a 3x3 one on
// width 5 is 9 in 16, a 1x1 one 1 in 8 (measured on VGG-11 x0.5 at batch 64, 31 % of all FMA
// lanes computed padding columns; docs/BENCHMARKS.md, issue 12 run 7). With a batch there
// is a better axis: VL images side by side. The prepared input of a group of VL images is
// interleaved,
//     buf[c][phase][i][j][m] = x_padded[image m][c][i*sh + a][j*sw + b]   (m < VL),
// so one vector load at (c, phase, i, j) holds the same input position of every image and
// every FMA lane computes a real output value. A register tile is R output rows x Wt output
// columns (R*Wt <= kTile vectors, chosen per plane so that tiles cover it without padding
// columns); a nonzero whose table offset is off reads tile row r, column w at
//     in + off + r * Wq * VL + w * VL,
// one broadcast and R*Wt (load, FMA) pairs per nonzero, as in the per-image loop.
// Tiles of fewer than 8 vectors give one output channel fewer FMA chains than two FMA
// ports of latency 4-5 keep busy, so their nonzeros go round-robin to S sets of
// accumulators (slimkit_sparse_tile_sets, sparse_conv_kernel.h).
//
// Included after sparse_conv_kernel.h (kTile, the offset types) by isa_unit.h and by
// sparse_conv_dispatch.h; internal linkage like that file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

// Where nonzero z reads: in + p[z], an offset the call computed once per nonzero (its column's
// table entry, sparse_conv.cpp) and shared by every group and tile; one load fewer per
// nonzero than the table lookup, and no load that depends on another.
struct DirectOffsets32 {
  const int32_t* __restrict p;
  int64_t operator[](int64_t z) const { return p[z]; }
  DirectOffsets32 operator+(int64_t z) const { return {p + z}; }
};

template <int T>
constexpr int slimkit_lanes_sets() {
  // S * T accumulators: at least 10 FMA chains (two ports of latency 4-5) and at most 14
  // registers, with one for the broadcast (the loads are FMA memory operands).
  return T >= 8 ? 1 : T >= 5 ? 2 : T == 4 ? 3 : T == 3 ? 4 : T == 2 ? 6 : 12;
}

// One (R, Wt) tile at run time: every shape with R * Wt <= kTile has its case.
template <typename scalar_t, typename Off>
inline void slimkit_sparse_lanes_segment(const scalar_t* in, int64_t rstride, Off off, const scalar_t* val,
                                         int64_t nnz, scalar_t* st, bool init, scalar_t b, int64_t R, int64_t Wt) {
  switch (R * 16 + Wt) {
#define SLIMKIT_LANES_CASE(RR, WW) \
  case RR * 16 + WW:               \
    return slimkit_sparse_tile_sets<scalar_t, RR, WW, slimkit_lanes_sets<RR * WW>(), Off>(in, rstride, off, val, nnz, st, \
                                                                               init, b);
    SLIMKIT_LANES_CASE(1, 1) SLIMKIT_LANES_CASE(1, 2) SLIMKIT_LANES_CASE(1, 3) SLIMKIT_LANES_CASE(1, 4)
    SLIMKIT_LANES_CASE(1, 5) SLIMKIT_LANES_CASE(1, 6) SLIMKIT_LANES_CASE(1, 7) SLIMKIT_LANES_CASE(1, 8)
    SLIMKIT_LANES_CASE(1, 9) SLIMKIT_LANES_CASE(1, 10) SLIMKIT_LANES_CASE(1, 11) SLIMKIT_LANES_CASE(1, 12)
    SLIMKIT_LANES_CASE(2, 1) SLIMKIT_LANES_CASE(2, 2) SLIMKIT_LANES_CASE(2, 3) SLIMKIT_LANES_CASE(2, 4)
    SLIMKIT_LANES_CASE(2, 5) SLIMKIT_LANES_CASE(2, 6)
    SLIMKIT_LANES_CASE(3, 1) SLIMKIT_LANES_CASE(3, 2) SLIMKIT_LANES_CASE(3, 3) SLIMKIT_LANES_CASE(3, 4)
    SLIMKIT_LANES_CASE(4, 1) SLIMKIT_LANES_CASE(4, 2) SLIMKIT_LANES_CASE(4, 3)
    SLIMKIT_LANES_CASE(5, 1) SLIMKIT_LANES_CASE(5, 2) SLIMKIT_LANES_CASE(6, 1) SLIMKIT_LANES_CASE(6, 2)
    SLIMKIT_LANES_CASE(7, 1) SLIMKIT_LANES_CASE(8, 1) SLIMKIT_LANES_CASE(9, 1) SLIMKIT_LANES_CASE(10, 1)
    SLIMKIT_LANES_CASE(11, 1) SLIMKIT_LANES_CASE(12, 1)
#undef SLIMKIT_LANES_CASE
    default:
      return;  // not a tile the tiling (below) chooses
  }
}

// The tiling of an OH x OW output plane into tiles of R rows x Wt columns, R * Wt <= kTile:
// the columns in `nc` pieces of (nearly) equal width (piece k of n over a length L is
// [k * L / n, (k + 1) * L / n)), then each column piece's rows in pieces of at most
// kTile / Wt rows. nc is the count with the fewest tiles (the fewest column pieces on a tie):
// fewer, fuller tiles keep more FMA chains per nonzero and pass over the output channels
// fewer times. A 7x7 plane: columns 3 + 4, tiles 4x3, 3x3, 2x4, 2x4, 3x4 (5 tiles, 9.8
// vectors each) rather than seven 1x7 rows.
inline int64_t slimkit_lanes_row_pieces(int64_t OH, int64_t Wt) {
  const int64_t rmax = std::max<int64_t>(1, kTile / Wt);
  return (OH + rmax - 1) / rmax;
}

inline int64_t slimkit_lanes_columns(int64_t OH, int64_t OW) {
  int64_t best = 0, best_tiles = 0;
  for (int64_t nc = (OW + kTile - 1) / kTile; nc <= OW; ++nc) {
    int64_t tiles = 0;
    for (int64_t tc = 0; tc < nc; ++tc) tiles += slimkit_lanes_row_pieces(OH, (tc + 1) * OW / nc - tc * OW / nc);
    if (best == 0 || tiles < best_tiles) {
      best = nc;
      best_tiles = tiles;
    }
  }
  return best;
}

// The most rows of any tile (the channel blocks' input window, sparse_conv.cpp).
inline int64_t slimkit_lanes_max_rows(int64_t OH, int64_t OW) {
  const int64_t nc = slimkit_lanes_columns(OH, OW);
  int64_t most = 1;
  for (int64_t tc = 0; tc < nc; ++tc) {
    const int64_t nr = slimkit_lanes_row_pieces(OH, (tc + 1) * OW / nc - tc * OW / nc);
    most = std::max(most, (OH + nr - 1) / nr);
  }
  return most;
}

// Positions of a tile's stage: kTile, rounded up so that the VL x VL transposes of the
// scatter may read whole blocks of VL positions (the rows past the tile are ignored).
constexpr int64_t kLanesStagePositions = 16;
// Bytes of partial sums (tile positions x lanes x output channels) one pass over the channel
// blocks keeps live; with the input window (sparse_conv.cpp) they share L1.
constexpr int64_t kLanesStageBytes = 16 * 1024;
static_assert(kTile <= kLanesStagePositions, "a tile's positions fit its stage");

// dst[j * ld_dst + i] = src[i * ld_src + j] for i, j < VL: ATen's vector transpose where it has
// one (8 x 8 float on AVX2, 16 x 16 float on AVX-512), else its scalar loop.
template <typename scalar_t>
inline void slimkit_lanes_transpose(const scalar_t* src, int64_t ld_src, scalar_t* dst, int64_t ld_dst) {
  constexpr int VL = int(at::vec::Vectorized<scalar_t>::size());
  if constexpr (VL == 8)
    at::vec::transpose_mxn<scalar_t, 8, 8>(src, ld_src, dst, ld_dst);
  else
    at::vec::transpose_mxn<scalar_t>(src, ld_src, dst, ld_dst, VL, VL);
}

// The group's interleaved input: channel c of image m (at x + m * in_image) into
// buf[c][phase][i][j][m]; lanes m >= M are zero. Stride 1 with a full group: the padding
// cells are zeroed, then the channel's H*W values go VL flat positions at a time (rows
// included: a 7x7 plane has no run of 8 columns) through one VL x VL transpose (images x
// positions) and VL vector stores; otherwise, and for the tail, one value at a time.
template <typename scalar_t>
inline void slimkit_lanes_prepare(const scalar_t* x, int64_t in_image, int64_t M, const slimkit::cpu::LanesGeometry& g,
                                  scalar_t* buf) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  const int64_t HW = g.H * g.W;
  if (g.sh == 1 && g.sw == 1 && M == VL) {
    scalar_t block[VL * VL];
    for (int64_t c = 0; c < g.C; ++c) {
      const scalar_t* xc = x + c * HW;
      scalar_t* dst = buf + c * g.chan * VL;
      for (int64_t i = 0; i < g.Hq; ++i) {
        scalar_t* row = dst + i * g.Wq * VL;
        const int64_t ih = i - g.ph;
        if (ih < 0 || ih >= g.H) {
          std::fill(row, row + g.Wq * VL, scalar_t(0));
          continue;
        }
        std::fill(row, row + g.pw * VL, scalar_t(0));
        std::fill(row + (g.pw + g.W) * VL, row + g.Wq * VL, scalar_t(0));
      }
      int64_t f = 0, ih = 0, iw = 0;  // flat position f = ih * W + iw
      for (; f + VL <= HW; f += VL) {
        slimkit_lanes_transpose<scalar_t>(xc + f, in_image, block, VL);
        for (int64_t k = 0; k < VL; ++k) {
          Vec::loadu(block + k * VL).store(dst + ((ih + g.ph) * g.Wq + iw + g.pw) * VL);
          if (++iw == g.W) {
            iw = 0;
            ++ih;
          }
        }
      }
      for (; f < HW; ++f) {
        scalar_t* cell = dst + ((ih + g.ph) * g.Wq + iw + g.pw) * VL;
        for (int64_t m = 0; m < VL; ++m) cell[m] = xc[m * in_image + f];
        if (++iw == g.W) {
          iw = 0;
          ++ih;
        }
      }
    }
    return;
  }
  for (int64_t c = 0; c < g.C; ++c) {
    const scalar_t* xc = x + c * HW;
    for (int64_t a = 0; a < g.sh; ++a) {
      for (int64_t b = 0; b < g.sw; ++b) {
        scalar_t* dst = buf + (c * g.chan + (a * g.sw + b) * g.plane) * VL;
        for (int64_t i = 0; i < g.Hq; ++i) {
          scalar_t* row = dst + i * g.Wq * VL;
          const int64_t ih = i * g.sh + a - g.ph;
          if (ih < 0 || ih >= g.H) {
            std::fill(row, row + g.Wq * VL, scalar_t(0));
            continue;
          }
          const scalar_t* src = xc + ih * g.W;
          for (int64_t j = 0; j < g.Wq; ++j) {
            const int64_t iw = j * g.sw + b - g.pw;
            scalar_t* cell = row + j * VL;
            if (iw < 0 || iw >= g.W) {
              std::fill(cell, cell + VL, scalar_t(0));
              continue;
            }
            for (int64_t m = 0; m < M; ++m) cell[m] = src[m * in_image + iw];
            std::fill(cell + M, cell + VL, scalar_t(0));
          }
        }
      }
    }
  }
}

// dst[0 : W) = src[0 : W) for a run of a tile row, W <= kTile known at compile time per case,
// so the copy is a few inlined moves instead of a call to memcpy.
template <typename scalar_t>
inline void slimkit_lanes_copy_run(scalar_t* dst, const scalar_t* src, int64_t W) {
  switch (W) {
#define SLIMKIT_RUN_CASE(WW) \
  case WW:                   \
    std::memcpy(dst, src, WW * sizeof(scalar_t)); \
    return;
    SLIMKIT_RUN_CASE(1) SLIMKIT_RUN_CASE(2) SLIMKIT_RUN_CASE(3) SLIMKIT_RUN_CASE(4) SLIMKIT_RUN_CASE(5)
    SLIMKIT_RUN_CASE(6) SLIMKIT_RUN_CASE(7) SLIMKIT_RUN_CASE(8) SLIMKIT_RUN_CASE(9) SLIMKIT_RUN_CASE(10)
    SLIMKIT_RUN_CASE(11) SLIMKIT_RUN_CASE(12)
#undef SLIMKIT_RUN_CASE
    default:
      std::memcpy(dst, src, W * sizeof(scalar_t));
  }
}
static_assert(kTile == 12, "slimkit_lanes_copy_run has one case per run length up to kTile");

// The fused ReLU + 2x2 max pool of the batch path (sparse_conv2d_relu_pool): z is the group's
// output still interleaved, z[((oc * OH + oh) * OW + ow) * VL + m], so a pooled position is the
// maximum of four whole vectors (every image at once, no deinterleaving), and only the pooled
// values, a quarter of the output, are transposed back: image m's OC x OH/2 x OW/2 at
// y + m * ostride. NaN propagates (at::vec::maximum), as in max_pool2d.
template <typename scalar_t>
inline void slimkit_lanes_pool(const scalar_t* z, int64_t oc0, int64_t oc1, int64_t OH, int64_t OW, int64_t M,
                               scalar_t* y, int64_t ostride) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  const int64_t PW = OW / 2, PP = (OH / 2) * PW;
  const Vec zero(scalar_t(0));
  scalar_t blk[VL * VL] = {}, tmp[VL * VL];  // VL pooled positions x images, and transposed
  for (int64_t oc = oc0; oc < oc1; ++oc) {
    const scalar_t* zo = z + oc * OH * OW * VL;
    for (int64_t p0 = 0; p0 < PP; p0 += VL) {
      const int64_t n = std::min(VL, PP - p0);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t ph = (p0 + k) / PW, pw = (p0 + k) % PW;
        const scalar_t* a = zo + (2 * ph * OW + 2 * pw) * VL;
        const Vec top = at::vec::maximum(Vec::loadu(a), Vec::loadu(a + VL));
        const Vec bottom = at::vec::maximum(Vec::loadu(a + OW * VL), Vec::loadu(a + OW * VL + VL));
        at::vec::maximum(at::vec::maximum(top, bottom), zero).store(blk + k * VL);
      }
      slimkit_lanes_transpose<scalar_t>(blk, VL, tmp, VL);  // rows k >= n are stale, and never copied
      for (int64_t m = 0; m < M; ++m) std::memcpy(y + m * ostride + oc * PP + p0, tmp + m * VL, n * sizeof(scalar_t));
    }
  }
}

// One group of M <= VL images (lanes m >= M are computed on zeros and not written), output
// channels [oc0, oc1): the interleaved input (slimkit_lanes_prepare into buf, which must hold
// VL * (C * chan) elements and slack), every tile of the plane, and the scatter back.
//   x       image m's input at x + m * in_image (C x H x W)
//   seg     (OC, ncb + 1) channel-block segments, as slimkit_sparse_tiles
//   off     nonzero z reads buf + off[z] (+ the tile's start): off counts VL elements per position
//   y       image m's output at y + m * ostride, OC x OH x OW; or with `pooled`, the interleaved
//           output (OC * OH * OW * VL elements) that is then pooled into image m's
//           pooled + m * pstride (slimkit_lanes_pool)
//   stage   at least (oc1 - oc0) * kLanesStagePositions * VL elements
template <typename scalar_t, typename Off>
inline void slimkit_sparse_lanes_group(const scalar_t* x, int64_t in_image, int64_t M,
                                       const slimkit::cpu::LanesGeometry& g, scalar_t* buf, const int64_t* seg,
                                       int64_t ncb, Off off, const scalar_t* val, const scalar_t* bias, int64_t oc0,
                                       int64_t oc1, scalar_t* y, int64_t ostride, scalar_t* stage, scalar_t* pooled,
                                       int64_t pstride) {
  constexpr int64_t VL = at::vec::Vectorized<scalar_t>::size();
  static_assert(VL <= kLanesStagePositions, "the scatter transposes blocks of VL stage positions");
  constexpr int64_t SP = kLanesStagePositions;
  slimkit_lanes_prepare<scalar_t>(x, in_image, M, g, buf);
  const int64_t OH = g.OH, OW = g.OW, Wq = g.Wq;
  const int64_t nc = slimkit_lanes_columns(OH, OW);
  const int64_t rstride = Wq * VL, plane = OH * OW;
  scalar_t tmp[SP * SP];  // one channel's tile, transposed: tmp[m * SP + position]
  for (int64_t tc = 0; tc < nc; ++tc) {
    const int64_t ow0 = tc * OW / nc, Wt = (tc + 1) * OW / nc - ow0;
    const int64_t nr = slimkit_lanes_row_pieces(OH, Wt);
    for (int64_t tr = 0; tr < nr; ++tr) {
      const int64_t oh0 = tr * OH / nr, R = (tr + 1) * OH / nr - oh0;
      const scalar_t* in_t = buf + (oh0 * Wq + ow0) * VL;
      // Output channels in blocks whose partial sums (stage) stay in L1 beside the input
      // window of a channel block: with all of them, a 7x7 tile of 128 channels put 28 KB of
      // stage through L1 per channel block and evicted the window.
      const int64_t T = R * Wt;
      const int64_t ocb = std::max<int64_t>(1, kLanesStageBytes / (T * VL * int64_t(sizeof(scalar_t))));
      for (int64_t ob = oc0; ob < oc1; ob += ocb) {
        const int64_t oe = std::min(oc1, ob + ocb);
        for (int64_t cb = 0; cb < ncb; ++cb) {
          for (int64_t oc = ob; oc < oe; ++oc) {
            const int64_t* s = seg + oc * (ncb + 1);
            const int64_t z0 = s[cb], z1 = s[cb + 1];
            if (cb > 0 && z1 == z0) continue;  // the first block initialises the stage (with the bias)
            slimkit_sparse_lanes_segment<scalar_t, Off>(in_t, rstride, off + z0, val + z0, z1 - z0,
                                                        stage + (oc - oc0) * SP * VL, cb == 0,
                                                        bias ? bias[oc] : scalar_t(0), R, Wt);
          }
        }
      }
      if (pooled) {  // into the interleaved output, whole vectors
        using Vec = at::vec::Vectorized<scalar_t>;
        for (int64_t oc = oc0; oc < oc1; ++oc) {
          const scalar_t* st = stage + (oc - oc0) * SP * VL;
          for (int64_t r = 0; r < R; ++r)
            for (int64_t w = 0; w < Wt; ++w)
              Vec::loadu(st + (r * Wt + w) * VL).store(y + ((oc * OH + oh0 + r) * OW + ow0 + w) * VL);
        }
        continue;
      }
      // Back to every image's NCHW output: transpose the tile (positions x images), then one
      // contiguous run of Wt values per image and tile row.
      for (int64_t oc = oc0; oc < oc1; ++oc) {
        const scalar_t* st = stage + (oc - oc0) * SP * VL;
        for (int64_t p0 = 0; p0 < T; p0 += VL) slimkit_lanes_transpose<scalar_t>(st + p0 * VL, VL, tmp + p0, SP);
        for (int64_t m = 0; m < M; ++m) {
          scalar_t* dst = y + m * ostride + oc * plane + oh0 * OW + ow0;
          const scalar_t* src = tmp + m * SP;
          for (int64_t r = 0; r < R; ++r) slimkit_lanes_copy_run<scalar_t>(dst + r * OW, src + r * Wt, Wt);
        }
      }
    }
  }
  if (pooled) slimkit_lanes_pool<scalar_t>(y, oc0, oc1, OH, OW, M, pooled, pstride);
}

}  // namespace

#if defined(SLIMKIT_ISA_NS)
namespace slimkit {
namespace cpu {
namespace SLIMKIT_ISA_NS {

int64_t sparse_lanes() { return at::vec::Vectorized<float>::size(); }

void sparse_lanes_group(const float* x, int64_t in_image, int64_t M, const LanesGeometry& g, float* buf,
                        const int64_t* seg, int64_t ncb, const int32_t* off, const float* val, const float* bias,
                        int64_t oc0, int64_t oc1, float* y, int64_t ostride, float* stage, float* pooled,
                        int64_t pstride) {
  slimkit_sparse_lanes_group<float>(x, in_image, M, g, buf, seg, ncb, DirectOffsets32{off}, val, bias, oc0, oc1, y,
                                    ostride, stage, pooled, pstride);
}

}  // namespace SLIMKIT_ISA_NS
}  // namespace cpu
}  // namespace slimkit
#endif
