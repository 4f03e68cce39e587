// Inner loops of the direct sparse convolution (Park et al., "Faster CNNs with
// Direct Sparse Convolutions and Guided Pruning", ICLR 2017), shared by
// sparse_conv.cpp / sparse_linear.cpp (baseline ISA, every dtype) and the ISA builds
// (isa_unit.h: the same code compiled for base, AVX2 and AVX-512, float32). Each
// includer has already included <ATen/cpu/vec/vec.h> for its own CPU_CAPABILITY, so
// `Vectorized` below is that ISA's vector; the templates have internal linkage so the
// copies never meet, and an ISA build exports only the wrappers at the end of the file,
// in its own namespace.
//
// Layout (see sparse_conv.cpp): the input image is zero-padded and split by stride
// phase into planes of Hq x Wq, and the output plane of every output channel is
// computed on the "virtual" width Wq (columns ow >= OW are junk and dropped when a
// tile is copied out). A nonzero weight (c, r, s) then reads the input at one fixed
// offset off = plane(c, phase(r), phase(s)) + (r*dh/sh)*Wq + (s*dw/sw) for every
// output position j: out[j] += value * in[off + j].
//
// Blocking: the flat output positions are cut into tiles of up to kTile vectors. For one
// tile, the loop runs over blocks of input channels, and inside a block over all
// output channels, and inside that over the row's nonzeros in the block: so the
// input window of one (tile, channel block) — sized to stay in L1 — is reused by
// every output channel, while the tile's accumulators for one output channel live
// in registers (one broadcast and kTile (load, FMA) pairs per nonzero). Partial
// sums between channel blocks go through a small per-tile stage (OC x tile).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

constexpr int kTile = 12;  // vectors per register tile (12 accumulators + 1 broadcast of 16 AVX2 registers)

// Where nonzero z reads its input: in + off[z]. Either a plan computed per call (sparse_linear:
// one offset per nonzero) or a table with one offset per weight column, built per call in
// O(columns) and looked up through the nonzero's column: tab[ci[z]] (the convolutions: a
// column (c, r, s) reads the prepared input at one fixed offset). The table costs one L1 load
// per nonzero in the loop instead of a pass over the nonzeros per call.
struct PlanOffsets {
  const int64_t* __restrict p;
  int64_t operator[](int64_t z) const { return p[z]; }
  PlanOffsets operator+(int64_t z) const { return {p + z}; }
};
template <typename index_t>
struct TableOffsets {
  const index_t* __restrict ci;
  const int32_t* __restrict tab;
  int64_t operator[](int64_t z) const { return tab[ci[z]]; }
  TableOffsets operator+(int64_t z) const { return {ci + z, tab}; }
};

// Whether every column ci[0 : nnz) lies in [0, K) (a table lookup must never read past the
// table): the largest column as an unsigned number, in one vectorisable pass.
template <typename index_t>
inline bool slimkit_columns_in_range(const index_t* __restrict ci, int64_t nnz, int64_t K) {
  using U = std::make_unsigned_t<index_t>;
  U most = 0;  // a negative column is a huge unsigned one
  for (int64_t z = 0; z < nnz; ++z) {
    const U c = U(ci[z]);
    most = c > most ? c : most;
  }
  return nnz == 0 || (K > 0 && uint64_t(most) < uint64_t(K));
}

template <typename scalar_t, int T, typename Off>
inline void slimkit_sparse_tile(const scalar_t* __restrict in, Off off,
                                const scalar_t* __restrict val, int64_t nnz, scalar_t* __restrict st, bool init,
                                scalar_t b) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  Vec acc[T];
  if (init) {
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[k] = Vec(b);
  } else {
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[k] = Vec::loadu(st + k * VL);
  }
  for (int64_t z = 0; z < nnz; ++z) {
    const Vec v(val[z]);
    const scalar_t* p = in + off[z];
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[k] = at::vec::fmadd(v, Vec::loadu(p + k * VL), acc[k]);
  }
#pragma GCC unroll 16
  for (int k = 0; k < T; ++k) acc[k].store(st + k * VL);
}

// A narrow tile (a 3x3 output plane is 2 vectors on its padded width) gives one output
// channel only T independent FMA chains, and each nonzero would wait out an FMA latency
// (4-5 cycles) on the previous one. So the nonzeros go round-robin to S sets of T
// accumulators (S * T >= 8 FMAs in flight, what two FMA ports of latency 4 need), which are
// summed at the end. The tile is R rows of Wt vectors, row r at in + r * rstride (the
// per-image loop uses R = 1; the batch path, sparse_conv_lanes.h, R rows of a plane).
template <typename scalar_t, int R, int Wt, int S, typename Off>
inline void slimkit_sparse_tile_sets(const scalar_t* __restrict in, int64_t rstride, Off off,
                                     const scalar_t* __restrict val, int64_t nnz, scalar_t* __restrict st, bool init,
                                     scalar_t b) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  constexpr int T = R * Wt;
  Vec acc[S][T];
#pragma GCC unroll 16
  for (int k = 0; k < T; ++k) acc[0][k] = init ? Vec(b) : Vec::loadu(st + k * VL);
#pragma GCC unroll 16
  for (int s = 1; s < S; ++s)
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[s][k] = Vec(scalar_t(0));
  int64_t z = 0;
  for (; z + S <= nnz; z += S) {
#pragma GCC unroll 16
    for (int s = 0; s < S; ++s) {
      const Vec v(val[z + s]);
      const scalar_t* p = in + off[z + s];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int w = 0; w < Wt; ++w)
          acc[s][r * Wt + w] = at::vec::fmadd(v, Vec::loadu(p + r * rstride + w * VL), acc[s][r * Wt + w]);
    }
  }
  for (; z < nnz; ++z) {
    const Vec v(val[z]);
    const scalar_t* p = in + off[z];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int w = 0; w < Wt; ++w)
        acc[0][r * Wt + w] = at::vec::fmadd(v, Vec::loadu(p + r * rstride + w * VL), acc[0][r * Wt + w]);
  }
#pragma GCC unroll 16
  for (int s = 1; s < S; ++s)
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[0][k] = acc[0][k] + acc[s][k];
#pragma GCC unroll 16
  for (int k = 0; k < T; ++k) acc[0][k].store(st + k * VL);
}

// st[0 : nv*VL) (+)= sum_z val[z] * in[off[z] + j], nv <= kTile vectors in registers;
// init: start from b instead of st. Tiles of 1-3 vectors split their nonzeros over S sets
// of accumulators: measured (AMD EPYC Zen 3, AVX2, 3x3 convs 128->128 and 256->256, 90 %
// sparse, batch 1, 1 thread, min of 300 calls, three alternated runs) 1.2-1.4x faster on 1
// vector, 1.07-1.08x on 2, 1.04-1.06x on 3, but 4-6 % slower on 4-6 vectors (which already
// keep 4-6 chains busy; the sets' zeroing and sums cost more than the latency they hide).
template <typename scalar_t, typename Off>
inline void slimkit_sparse_segment(const scalar_t* in, Off off, const scalar_t* val, int64_t nnz,
                                   scalar_t* st, bool init, scalar_t b, int64_t nv) {
  switch (nv) {
#define SLIMKIT_SPARSE_CASE(T) \
  case T:                      \
    return slimkit_sparse_tile<scalar_t, T, Off>(in, off, val, nnz, st, init, b);
    case 1:
      return slimkit_sparse_tile_sets<scalar_t, 1, 1, 8, Off>(in, 0, off, val, nnz, st, init, b);
    case 2:
      return slimkit_sparse_tile_sets<scalar_t, 1, 2, 4, Off>(in, 0, off, val, nnz, st, init, b);
    case 3:
      return slimkit_sparse_tile_sets<scalar_t, 1, 3, 3, Off>(in, 0, off, val, nnz, st, init, b);
    SLIMKIT_SPARSE_CASE(4)
    SLIMKIT_SPARSE_CASE(5) SLIMKIT_SPARSE_CASE(6) SLIMKIT_SPARSE_CASE(7) SLIMKIT_SPARSE_CASE(8)
    SLIMKIT_SPARSE_CASE(9) SLIMKIT_SPARSE_CASE(10) SLIMKIT_SPARSE_CASE(11) SLIMKIT_SPARSE_CASE(12)
#undef SLIMKIT_SPARSE_CASE
    default:
      return;
  }
}
static_assert(kTile == 12, "slimkit_sparse_segment has one case per tile width up to kTile");

template <typename scalar_t>
constexpr int64_t slimkit_sparse_tile_len() {
  return kTile * at::vec::Vectorized<scalar_t>::size();
}

// The L flat output positions are nvec = ceil(L / VL) vectors, cut into
// ceil(nvec / kTile) tiles of (nearly) equal width: tile t is vectors
// [t * nvec / ntiles, (t + 1) * nvec / ntiles).
inline int64_t slimkit_sparse_num_tiles(int64_t L, int64_t VL) {
  return ((L + VL - 1) / VL + kTile - 1) / kTile;
}

// dst[0 : n) = src[0 : n) for one output row of a tile (tens of values, per output channel and
// row: ~115 K calls per VGG-11 x0.5 layer at batch 64): whole vectors, the last one overlapping
// the one before when n is not a multiple of VL (the same values written twice), so no call
// of memcpy for short rows.
template <typename scalar_t>
inline void slimkit_copy_row(scalar_t* __restrict dst, const scalar_t* __restrict src, int64_t n) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  if (n < VL) {
    std::memcpy(dst, src, sizeof(scalar_t) * n);
    return;
  }
  int64_t k = 0;
  for (; k + VL <= n; k += VL) Vec::loadu(src + k).store(dst + k);
  if (k < n) Vec::loadu(src + n - VL).store(dst + n - VL);
}

// One tile of nv vectors (its input at in_t) for output channels [oc0, oc1), over every channel
// block: output channel oc's accumulators at st0 + (oc - oc0) * ld. The first block also
// initialises them (with the bias), nonzeros or not.
template <typename scalar_t, typename Off>
inline void slimkit_sparse_tile_pass(const scalar_t* in_t, const int64_t* seg, int64_t ncb, Off off,
                                     const scalar_t* val, const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t nv,
                                     scalar_t* st0, int64_t ld) {
  for (int64_t cb = 0; cb < ncb; ++cb) {
    for (int64_t oc = oc0; oc < oc1; ++oc) {
      const int64_t* s = seg + oc * (ncb + 1);
      const int64_t z0 = s[cb], z1 = s[cb + 1];
      if (cb > 0 && z1 == z0) continue;
      slimkit_sparse_segment<scalar_t, Off>(in_t, off + z0, val + z0, z1 - z0, st0 + (oc - oc0) * ld, cb == 0,
                                            bias ? bias[oc] : scalar_t(0), nv);
    }
  }
}

// Tiles [t0, t1) of one image, output channels [oc0, oc1).
//   in    prepared (padded, phase-split) input of the image, with slack after it
//   seg   (OC, ncb + 1): seg[oc*(ncb+1) + k] = first nonzero of row oc in channel block k
//         (nonzeros sorted by column within each row); seg[oc*(ncb+1) + ncb] = row end
//   off, val per nonzero; bias may be null
//   y     the image's output, OC x OH x OW; L = OH * Wq flat positions
//   stage at least (oc1 - oc0) * tile_len elements
template <typename scalar_t, typename Off>
inline void slimkit_sparse_tiles(const scalar_t* in, const int64_t* seg, int64_t ncb, Off off,
                                 const scalar_t* val, const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t t0,
                                 int64_t t1, int64_t OH, int64_t OW, int64_t Wq, scalar_t* y, scalar_t* stage) {
  constexpr int64_t VL = at::vec::Vectorized<scalar_t>::size();
  constexpr int64_t TL = slimkit_sparse_tile_len<scalar_t>();
  const int64_t L = OH * Wq;
  const int64_t nvec = (L + VL - 1) / VL;
  const int64_t ntiles = slimkit_sparse_num_tiles(L, VL);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t v0 = t * nvec / ntiles, v1 = (t + 1) * nvec / ntiles;
    const int64_t j0 = v0 * VL, jend = std::min(L, v1 * VL);
    slimkit_sparse_tile_pass<scalar_t, Off>(in + j0, seg, ncb, off, val, bias, oc0, oc1, v1 - v0, stage, TL);
    // Copy the tile's valid columns (ow < OW) out of the virtual-width layout.
    for (int64_t oh = j0 / Wq; oh * Wq < jend; ++oh) {
      const int64_t lo = std::max(j0, oh * Wq), hi = std::min(jend, oh * Wq + OW);
      if (hi <= lo) continue;
      const int64_t ow = lo - oh * Wq;
      for (int64_t oc = oc0; oc < oc1; ++oc)
        slimkit_copy_row<scalar_t>(y + (oc * OH + oh) * OW + ow, stage + (oc - oc0) * TL + (lo - j0), hi - lo);
    }
  }
}

// The tiles of slimkit_sparse_tiles for all of one image's plane, output channels [oc0, oc1), into
// an output that keeps the virtual width: channel oc's OH x Wq plane at y + oc * ld (ld at least
// the plane's whole vectors, so the last tile's surplus lanes stay in it), the accumulators
// stored there directly: no stage and no copy of the valid columns. The fused conv + pool
// (sparse_conv.cpp) pools it with row stride Wq, the junk columns ow >= OW never read into a
// valid output.
template <typename scalar_t, typename Off>
inline void slimkit_sparse_tiles_wide(const scalar_t* in, const int64_t* seg, int64_t ncb, Off off,
                                      const scalar_t* val, const scalar_t* bias, int64_t oc0, int64_t oc1, int64_t OH,
                                      int64_t Wq, scalar_t* y, int64_t ld) {
  constexpr int64_t VL = at::vec::Vectorized<scalar_t>::size();
  const int64_t L = OH * Wq;
  const int64_t nvec = (L + VL - 1) / VL;
  const int64_t ntiles = slimkit_sparse_num_tiles(L, VL);
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t v0 = t * nvec / ntiles, v1 = (t + 1) * nvec / ntiles;
    slimkit_sparse_tile_pass<scalar_t, Off>(in + v0 * VL, seg, ncb, off, val, bias, oc0, oc1, v1 - v0,
                                            y + oc0 * ld + v0 * VL, ld);
  }
}

// Several images at once on a narrow plane (one tile of T <= 3 vectors per image): M images'
// tiles, image m's input at in + m * istride, its accumulators at st + m*T*VL. A nonzero's
// value, column and table offset are loaded once for the M images; one image at a time they
// are loaded once per image, and on a 2-vector plane those loads are most of the work.
template <typename scalar_t, int T, int M, typename Off>
inline void slimkit_sparse_tile_images(const scalar_t* __restrict in, int64_t istride, Off off,
                                       const scalar_t* __restrict val, int64_t nnz, scalar_t* __restrict st,
                                       bool init, scalar_t b) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t VL = Vec::size();
  Vec acc[M][T];
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[m][k] = init ? Vec(b) : Vec::loadu(st + (m * T + k) * VL);
  for (int64_t z = 0; z < nnz; ++z) {
    const Vec v(val[z]);
    const scalar_t* p = in + off[z];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
      for (int k = 0; k < T; ++k) acc[m][k] = at::vec::fmadd(v, Vec::loadu(p + m * istride + k * VL), acc[m][k]);
  }
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 16
    for (int k = 0; k < T; ++k) acc[m][k].store(st + (m * T + k) * VL);
}

// The image groups slimkit_sparse_tiles_images takes: M images of a T-vector plane, M * T
// vectors in registers (8 or more FMA chains, at most kTile).
inline bool slimkit_sparse_image_group(int64_t T, int64_t M) {
  return (T == 1 && (M == 8 || M == 4 || M == 2)) || ((T == 2 || T == 3) && (M == 4 || M == 2));
}

// M images (slimkit_sparse_image_group) of a plane that is one tile of T vectors, output
// channels [oc0, oc1); image m reads in + m * istride and writes y + m * ostride (OC x OH x OW),
// otherwise as slimkit_sparse_tiles.
template <typename scalar_t, typename Off>
inline void slimkit_sparse_tiles_images(const scalar_t* in, int64_t istride, int64_t M, const int64_t* seg,
                                        int64_t ncb, Off off, const scalar_t* val, const scalar_t* bias, int64_t oc0,
                                        int64_t oc1, int64_t OH, int64_t OW, int64_t Wq, scalar_t* y, int64_t ostride,
                                        scalar_t* stage) {
  constexpr int64_t VL = at::vec::Vectorized<scalar_t>::size();
  constexpr int64_t TL = slimkit_sparse_tile_len<scalar_t>();
  const int64_t T = (OH * Wq + VL - 1) / VL;
  for (int64_t cb = 0; cb < ncb; ++cb) {
    for (int64_t oc = oc0; oc < oc1; ++oc) {
      const int64_t* s = seg + oc * (ncb + 1);
      const int64_t z0 = s[cb], z1 = s[cb + 1];
      if (cb > 0 && z1 == z0) continue;
      scalar_t* st = stage + (oc - oc0) * TL;
      const bool init = cb == 0;
      const scalar_t b = bias ? bias[oc] : scalar_t(0);
      switch (T * 16 + M) {
#define SLIMKIT_IMAGES_CASE(TT, MM)                                                                            \
  case TT * 16 + MM:                                                                                           \
    slimkit_sparse_tile_images<scalar_t, TT, MM, Off>(in, istride, off + z0, val + z0, z1 - z0, st, init, b); \
    break;
        SLIMKIT_IMAGES_CASE(1, 8) SLIMKIT_IMAGES_CASE(1, 4) SLIMKIT_IMAGES_CASE(1, 2)
        SLIMKIT_IMAGES_CASE(2, 4) SLIMKIT_IMAGES_CASE(2, 2) SLIMKIT_IMAGES_CASE(3, 4) SLIMKIT_IMAGES_CASE(3, 2)
#undef SLIMKIT_IMAGES_CASE
        default:
          return;  // not a group of slimkit_sparse_image_group: the caller never asks
      }
    }
  }
  // Copy the valid columns (ow < OW) of every image out of the virtual-width layout.
  for (int64_t m = 0; m < M; ++m)
    for (int64_t oc = oc0; oc < oc1; ++oc)
      for (int64_t oh = 0; oh < OH; ++oh)
        slimkit_copy_row<scalar_t>(y + m * ostride + (oc * OH + oh) * OW, stage + (oc - oc0) * TL + m * T * VL + oh * Wq,
                                   OW);
}

// sparse_linear at small batch (sparse_linear.cpp): rows [o0, o1) of y (N x OUT) =
// x (N x K) W^T + bias, W in CSR with int32 columns; one sparse dot product per
// (sample, row), VL nonzeros at a time with their inputs gathered, four vector
// accumulators. A column outside [0, K) is clamped before the gather (so never read
// out of bounds) and makes the call return false; the caller then raises.
template <typename scalar_t>
inline bool slimkit_sparse_gather_rows(const scalar_t* x, const int64_t* rp, const int32_t* ci, const scalar_t* val,
                                       const scalar_t* bias, scalar_t* y, int64_t N, int64_t K, int64_t OUT,
                                       int64_t o0, int64_t o1) {
  static_assert(sizeof(scalar_t) == sizeof(int32_t), "gathers with int32 lanes: float32 only");
  using Vec = at::vec::Vectorized<scalar_t>;
  using IVec = at::vec::Vectorized<int32_t>;
  constexpr int64_t VL = Vec::size();
  static_assert(IVec::size() == VL, "one int32 index per float lane");
  const int32_t kmax = int32_t(std::min<int64_t>(K, INT32_MAX) - 1);
  const IVec lo(0), hi(kmax);
  IVec bad(0);
  bool bad_tail = false;
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* xn = x + n * K;
    scalar_t* yn = y + n * OUT;
    for (int64_t o = o0; o < o1; ++o) {
      int64_t z = rp[o];
      const int64_t end = rp[o + 1];
      Vec acc0(scalar_t(0)), acc1(scalar_t(0)), acc2(scalar_t(0)), acc3(scalar_t(0));
      for (; z + 4 * VL <= end; z += 4 * VL) {
        const IVec i0 = IVec::loadu(ci + z), i1 = IVec::loadu(ci + z + VL);
        const IVec i2 = IVec::loadu(ci + z + 2 * VL), i3 = IVec::loadu(ci + z + 3 * VL);
        const IVec c0 = at::vec::clamp(i0, lo, hi), c1 = at::vec::clamp(i1, lo, hi);
        const IVec c2 = at::vec::clamp(i2, lo, hi), c3 = at::vec::clamp(i3, lo, hi);
        bad = bad | ((i0 != c0) | (i1 != c1)) | ((i2 != c2) | (i3 != c3));
        acc0 = at::vec::fmadd(Vec::loadu(val + z), at::vec::gather<sizeof(scalar_t)>(xn, c0), acc0);
        acc1 = at::vec::fmadd(Vec::loadu(val + z + VL), at::vec::gather<sizeof(scalar_t)>(xn, c1), acc1);
        acc2 = at::vec::fmadd(Vec::loadu(val + z + 2 * VL), at::vec::gather<sizeof(scalar_t)>(xn, c2), acc2);
        acc3 = at::vec::fmadd(Vec::loadu(val + z + 3 * VL), at::vec::gather<sizeof(scalar_t)>(xn, c3), acc3);
      }
      for (; z + VL <= end; z += VL) {
        const IVec i0 = IVec::loadu(ci + z);
        const IVec c0 = at::vec::clamp(i0, lo, hi);
        bad = bad | (i0 != c0);
        acc0 = at::vec::fmadd(Vec::loadu(val + z), at::vec::gather<sizeof(scalar_t)>(xn, c0), acc0);
      }
      scalar_t lanes[VL];
      ((acc0 + acc1) + (acc2 + acc3)).store(lanes);
      scalar_t sum = 0;
      for (int64_t l = 0; l < VL; ++l) sum += lanes[l];
      for (; z < end; ++z) {
        const int32_t c = ci[z];
        if (c < 0 || c > kmax) {
          bad_tail = true;
          continue;
        }
        sum += val[z] * xn[c];
      }
      yn[o] = (bias ? bias[o] : scalar_t(0)) + sum;
    }
  }
  int32_t flags[VL];
  bad.store(flags);
  for (int64_t l = 0; l < VL; ++l) bad_tail = bad_tail || flags[l] != 0;
  return !bad_tail;
}

}  // namespace

// In an ISA build (isa_unit.h, SLIMKIT_ISA_NS set), the float32 loops that isa.h declares.
#if defined(SLIMKIT_ISA_NS)
namespace slimkit {
namespace cpu {
namespace SLIMKIT_ISA_NS {

int64_t sparse_tile_len() { return slimkit_sparse_tile_len<float>(); }

void sparse_tiles(const float* in, const int64_t* seg, int64_t ncb, const int64_t* off, const float* val,
                  const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW,
                  int64_t Wq, float* y, float* stage) {
  slimkit_sparse_tiles<float>(in, seg, ncb, PlanOffsets{off}, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y, stage);
}

void sparse_tiles_table32(const float* in, const int64_t* seg, int64_t ncb, const int32_t* ci, const int32_t* tab,
                          const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1,
                          int64_t OH, int64_t OW, int64_t Wq, float* y, float* stage) {
  slimkit_sparse_tiles<float>(in, seg, ncb, TableOffsets<int32_t>{ci, tab}, val, bias, oc0, oc1, t0, t1, OH, OW, Wq,
                              y, stage);
}

void sparse_tiles_table64(const float* in, const int64_t* seg, int64_t ncb, const int64_t* ci, const int32_t* tab,
                          const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1,
                          int64_t OH, int64_t OW, int64_t Wq, float* y, float* stage) {
  slimkit_sparse_tiles<float>(in, seg, ncb, TableOffsets<int64_t>{ci, tab}, val, bias, oc0, oc1, t0, t1, OH, OW, Wq,
                              y, stage);
}

void sparse_tiles_images32(const float* in, int64_t istride, int64_t M, const int64_t* seg, int64_t ncb,
                           const int32_t* ci, const int32_t* tab, const float* val, const float* bias, int64_t oc0,
                           int64_t oc1, int64_t OH, int64_t OW, int64_t Wq, float* y, int64_t ostride, float* stage) {
  slimkit_sparse_tiles_images<float>(in, istride, M, seg, ncb, TableOffsets<int32_t>{ci, tab}, val, bias, oc0, oc1,
                                     OH, OW, Wq, y, ostride, stage);
}

void sparse_tiles_images64(const float* in, int64_t istride, int64_t M, const int64_t* seg, int64_t ncb,
                           const int64_t* ci, const int32_t* tab, const float* val, const float* bias, int64_t oc0,
                           int64_t oc1, int64_t OH, int64_t OW, int64_t Wq, float* y, int64_t ostride, float* stage) {
  slimkit_sparse_tiles_images<float>(in, istride, M, seg, ncb, TableOffsets<int64_t>{ci, tab}, val, bias, oc0, oc1,
                                     OH, OW, Wq, y, ostride, stage);
}

void sparse_tiles_wide32(const float* in, const int64_t* seg, int64_t ncb, const int32_t* ci, const int32_t* tab,
                         const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t OH, int64_t Wq, float* y,
                         int64_t ld) {
  slimkit_sparse_tiles_wide<float>(in, seg, ncb, TableOffsets<int32_t>{ci, tab}, val, bias, oc0, oc1, OH, Wq, y, ld);
}

void sparse_tiles_wide64(const float* in, const int64_t* seg, int64_t ncb, const int64_t* ci, const int32_t* tab,
                         const float* val, const float* bias, int64_t oc0, int64_t oc1, int64_t OH, int64_t Wq, float* y,
                         int64_t ld) {
  slimkit_sparse_tiles_wide<float>(in, seg, ncb, TableOffsets<int64_t>{ci, tab}, val, bias, oc0, oc1, OH, Wq, y, ld);
}

bool sparse_columns_in_range32(const int32_t* ci, int64_t nnz, int64_t K) {
  return slimkit_columns_in_range<int32_t>(ci, nnz, K);
}

bool sparse_columns_in_range64(const int64_t* ci, int64_t nnz, int64_t K) {
  return slimkit_columns_in_range<int64_t>(ci, nnz, K);
}

bool sparse_gather_rows(const float* x, const int64_t* rp, const int32_t* ci, const float* val, const float* bias,
                        float* y, int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1) {
  return slimkit_sparse_gather_rows<float>(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
}

}  // namespace SLIMKIT_ISA_NS
}  // namespace cpu
}  // namespace slimkit
#endif
