// sparse_conv2d on CPU: direct sparse convolution (Park et al., ICLR 2017) with a
// CSR weight over out_channels x (in_channels * kh * kw).
//
// No unfold and no sparse matmul: every nonzero w[oc, c, r, s] adds
// w * (input plane c shifted by (r, s)) to output plane oc. To make each of those
// updates one contiguous, vectorisable stream, the input image is first copied
// into a zero-padded buffer split by stride phase,
//     buf[c][a][b][i][j] = x_padded[c][i*sh + a][j*sw + b]   (Hq x Wq planes),
// and the output plane is computed on the buffer's width Wq, so a tap (c, r, s)
// reads buf at the single offset
//     off = plane(c, (r*dh) % sh, (s*dw) % sw) + ((r*dh) / sh) * Wq + (s*dw) / sw
// for every output position j = oh*Wq + ow. Columns ow >= OW are computed and
// dropped (a (kw-1)*dw/sw / Wq share of the work, 6% for 3x3 on 32x32). The inner
// loop (sparse_conv_kernel.h) keeps a tile of output vectors in registers and runs
// over the row's nonzeros: one broadcast + (load, FMA) per vector per nonzero. The
// offset of a nonzero comes from a table with one entry per weight column, looked up
// through its column in the loop (the plan, below): the per-call work before the loop
// is O(columns + rows), not a pass with a division per nonzero.
//
// Parallelism: over images when there are enough of them (each thread prepares its
// image's buffer, which stays in its L2, then runs every tile and output channel);
// otherwise all images are prepared up front and the work is split over (image,
// tile, block of output channels).
//
// ISA: float32 runs the inner loop's build for the ISA that cpu_kernels() picks
// (isa.h), everything else the baseline copy (sparse_conv_dispatch.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "scratch.h"
#include "sparse_conv_common.h"
#include "sparse_conv_dispatch.h"

namespace slimkit {

namespace {

using sparse_dispatch::Kernel;

// Bytes of input window (one output tile x one block of input channels) that the
// blocking aims to keep in L1 while every output channel passes over it.
constexpr int64_t kL1WindowBytes = 24 * 1024;
constexpr int64_t kMinChannelBlock = 16;
// The same for the batch path (sparse_conv_lanes.h), where a window of 48 KB (L1 plus L2 hits)
// beat 24 KB: 6 % less time over VGG-11 x0.5's four batch-path layers at batch 64 (minimum of
// 41 interleaved calls each, two runs; 64 KB 4 % less, 96-128 KB 7 % more).
constexpr int64_t kLanesWindowBytes = 48 * 1024;

struct Geometry {
  int64_t N, C, H, W, OC, kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Hp, Wp, Hq, Wq, OH, OW, plane, image, slack;
};

template <typename scalar_t>
void prepare_channel(const scalar_t* x, scalar_t* buf, const Geometry& g) {
  // x: one input channel (H x W); buf: its sh*sw phase planes of Hq x Wq.
  for (int64_t a = 0; a < g.sh; ++a) {
    for (int64_t b = 0; b < g.sw; ++b) {
      scalar_t* dst = buf + (a * g.sw + b) * g.plane;
      for (int64_t i = 0; i < g.Hq; ++i) {
        scalar_t* row = dst + i * g.Wq;
        const int64_t ih = i * g.sh + a - g.ph;
        if (ih < 0 || ih >= g.H) {
          std::fill(row, row + g.Wq, scalar_t(0));
          continue;
        }
        const scalar_t* src = x + ih * g.W;
        if (g.sw == 1) {
          std::fill(row, row + g.pw, scalar_t(0));
          std::memcpy(row + g.pw, src, sizeof(scalar_t) * g.W);
          std::fill(row + g.pw + g.W, row + g.Wq, scalar_t(0));
        } else {
          for (int64_t j = 0; j < g.Wq; ++j) {
            const int64_t iw = j * g.sw + b - g.pw;
            row[j] = (iw >= 0 && iw < g.W) ? src[iw] : scalar_t(0);
          }
        }
      }
    }
  }
}

// The prepared input: `size` elements that prepare_channel overwrites entirely,
// then `slack` zeros that the last plane's over-reads land in. The memory is the
// calling thread's scratch (scratch.h), reused from call to call.
template <typename scalar_t>
struct Buffer {
  ScratchBuffer<scalar_t> mem;
  Buffer(int64_t size, int64_t slack) : mem(ScratchSlot::input, size + slack) {
    std::fill(mem.data() + size, mem.data() + size + slack, scalar_t(0));
  }
  scalar_t* data() const { return mem.data(); }
};

// The plan, what a call computes before its loop: in O(columns + rows) and one vectorised
// pass over the columns, never a pass of arithmetic per nonzero (at batch 1 the former plan,
// a division per nonzero to split its column into (channel, tap), cost as much as the
// convolution on small planes):
//
// - the column table: one int32 offset into the prepared image per weight column, looked
//   up through each nonzero's column in the loop (TableOffsets, sparse_conv_kernel.h);
// - the check that every column indexes the table (else a Python error naming the first bad
//   one);
// - the block segments: per (output channel, channel block) the first nonzero, by binary
//   search over the row's columns. Rows come sorted from CSRWeight; on an unsorted row the
//   segments, non-decreasing, still cover each nonzero exactly once, so the result is the
//   same (the prepared image is complete in memory: blocks only order the reads).

// The column table: tab[c*kh*kw + r*kw + s] = (c * chan + tap[r*kw + s]) * lanes, where tap is the
// offset of (r, s) inside a channel's phase planes and lanes the images interleaved per
// position (1 on the per-image loop).
inline void column_table(const Geometry& g, int64_t lanes, int32_t* tab) {
  const int64_t chan = g.sh * g.sw * g.plane, khw = g.kh * g.kw;
  for (int64_t r = 0; r < g.kh; ++r)
    for (int64_t s = 0; s < g.kw; ++s) {
      const int64_t rr = r * g.dh, ss = s * g.dw;
      tab[r * g.kw + s] = int32_t((((rr % g.sh) * g.sw + ss % g.sw) * g.plane + (rr / g.sh) * g.Wq + ss / g.sw) * lanes);
    }
  for (int64_t c = 1; c < g.C; ++c)
    for (int64_t t = 0; t < khw; ++t) tab[c * khw + t] = int32_t(c * chan * lanes) + tab[t];
}

// Raises unless every column of ci lies in [0, K).
template <typename scalar_t, typename index_t>
void check_columns(const Kernel<scalar_t>& kernel, const index_t* ci, int64_t nnz, int64_t K) {
  if (kernel.template columns_in_range<index_t>(ci, nnz, K)) return;
  for (int64_t z = 0; z < nnz; ++z)
    TORCH_CHECK(ci[z] >= 0 && ci[z] < K, "sparse_conv2d: col_idx[", z, "] = ", int64_t(ci[z]),
                " is outside [0, in_channels*kh*kw = ", K, ")");
}

// seg (OC, ncb + 1): seg[oc*(ncb+1) + b] = first nonzero of row oc with column >= b * block
// (seg[..0] the row's start, seg[..ncb] its end).
template <typename index_t>
void block_segments(const int64_t* rp, const index_t* ci, int64_t OC, int64_t ncb, int64_t block, int64_t* seg) {
  for (int64_t oc = 0; oc < OC; ++oc) {
    int64_t* sg = seg + oc * (ncb + 1);
    const int64_t end = rp[oc + 1];
    sg[0] = rp[oc];
    for (int64_t b = 1; b < ncb; ++b)
      sg[b] = std::lower_bound(ci + sg[b - 1], ci + end, index_t(b * block)) - ci;
    sg[ncb] = end;
  }
}

// Whether groups of `lanes` images go one image per lane (sparse_conv_lanes.h). The batch path
// computes no padding lanes, and with the pool fused it pools whole vectors of images and
// transposes back only the pooled quarter; but it pays per (tile, output channel) for
// interleaved tiles of at most kTile positions, which only enough nonzeros per output channel
// amortise. Measured (AMD EPYC Zen 3, AVX2, 1 thread, batch 64, 3x3 convs 90 % sparse to 64
// channels, minimum of 40 interleaved calls; batch path / per-image loop):
//   - planes where more than a fifth of the per-image loop's lanes are padding (7x7 on width 9:
//     49 of 64 lanes used; 3x3: 9 of 16): 0.52-0.85x from 7 nonzeros per output channel on,
//     0.73x fused but 1.27x unfused at 0.9 (one input channel);
//   - wider planes, fused with the pool: 14x14 0.78-0.96x and 28x28 0.83-1.08x from 7 nonzeros
//     per output channel on (29 and up: 0.78-0.87x), 1.2-1.5x at 0.9;
//   - wider planes, unfused: 14x14 0.89x at 58 nonzeros per output channel, 1.02x at 29,
//     1.1-2.9x below; 28x28 0.99x at 58, 1.1x or more below.
// SLIMKIT_SPARSE_CONV_LANES=0|1 forces the choice (tests and measurements).
inline bool use_lanes(const Geometry& g, int64_t lanes, int64_t nnz, bool fused) {
  if (const char* env = std::getenv("SLIMKIT_SPARSE_CONV_LANES")) {
    if (std::strcmp(env, "0") == 0) return false;
    if (std::strcmp(env, "1") == 0) return true;
  }
  const int64_t computed = (g.OH * g.Wq + lanes - 1) / lanes * lanes;
  const bool padded = 5 * g.OH * g.OW < 4 * computed;
  const double per_channel = double(nnz) / double(std::max<int64_t>(1, g.OC));
  if (padded) return fused || per_channel >= 4;
  return per_channel >= (fused ? 16 : 48);
}

template <typename scalar_t, typename index_t>
void sparse_conv_lanes(const scalar_t* xp, const int64_t* rp, const index_t* ci, const scalar_t* val,
                       const scalar_t* bias, const Geometry& g, int64_t groups, scalar_t* yp, scalar_t* pooled);

// Output: y (N x OC x OH x OW); or, when `pooled` is given (sparse_conv2d_relu_pool), y is
// unused and each thread writes its image (or group) into its own scratch, which is pooled
// with ReLU into `pooled` (N x OC x OH/2 x OW/2) while it is still in that core's L2: the
// full-size activation never goes to memory and back.
template <typename scalar_t, typename index_t>
void sparse_conv_impl(const scalar_t* xp, const int64_t* rp, const index_t* ci, const scalar_t* val,
                      const scalar_t* bias, const Geometry& g, scalar_t* yp, scalar_t* pooled) {
  const Kernel<scalar_t> kernel{};
  // Enough images: whole groups of `lanes` images go one image per vector lane
  // (sparse_conv_lanes.h) where the per-image loop below would compute many padding lanes;
  // the images left over run below.
  const int64_t lanes = kernel.lanes();
  if (g.N >= lanes && use_lanes(g, lanes, rp[g.OC], pooled != nullptr)) {
    const int64_t groups = g.N / lanes;
    sparse_conv_lanes<scalar_t, index_t>(xp, rp, ci, val, bias, g, groups, yp, pooled);
    Geometry rest = g;
    rest.N = g.N - groups * lanes;
    const int64_t done = groups * lanes;
    if (rest.N > 0)
      sparse_conv_impl<scalar_t, index_t>(xp + done * g.C * g.H * g.W, rp, ci, val, bias, rest,
                                          pooled ? nullptr : yp + done * g.OC * g.OH * g.OW,
                                          pooled ? pooled + done * g.OC * (g.OH / 2) * (g.OW / 2) : nullptr);
    return;
  }
  const int64_t TL = kernel.tile_len();
  const int64_t ntiles = slimkit_sparse_num_tiles(g.OH * g.Wq, TL / kTile);

  // Channel blocks: the input window a tile reads from one channel spans the tile (its
  // actual width: a small plane's one tile is shorter than TL) plus the largest tap offset
  // inside the channel's phase planes.
  const int64_t VL = TL / kTile, nvec = (g.OH * g.Wq + VL - 1) / VL;
  const int64_t tile = (nvec + ntiles - 1) / ntiles * VL;
  const int64_t span = (g.dh * (g.kh - 1) / g.sh) * g.Wq + g.dw * (g.kw - 1) / g.sw;
  const int64_t window = g.sh * g.sw * (tile + span) * int64_t(sizeof(scalar_t));
  const int64_t threads = at::get_num_threads();
  // Many images: one image (or group, below) at a time per thread, its prepared input staying
  // in that core's L2. Few: every image prepared up front, then (image, tile, output-channel
  // block) items.
  const bool per_image = g.N >= threads && g.N > 1 && (g.N % threads == 0 || g.N >= 4 * threads);
  // On a narrow plane (one tile of at most 3 vectors) many images go in groups of up to
  // `group` (slimkit_sparse_image_group), which share each nonzero's loads; the window
  // is then the group's.
  const int64_t group = per_image && ntiles == 1 && nvec <= 3 ? (nvec == 1 ? 8 : 4) : 1;
  // At least kMinChannelBlock channels per block, so that each (output channel, block)
  // segment has enough nonzeros to pay for its stage round trip on large images.
  const int64_t cb_size = std::min(g.C, std::max(kMinChannelBlock, kL1WindowBytes / (group * window)));
  const int64_t ncb = (g.C + cb_size - 1) / cb_size;

  // The plan (above): the column table (column_table) and the segments of the channel blocks.
  const int64_t chan = g.sh * g.sw * g.plane, khw = g.kh * g.kw, K = g.C * khw;
  TORCH_CHECK(g.image + g.slack <= INT32_MAX, "sparse_conv2d: one image of ", g.image,
              " prepared elements is more than the kernel's 32-bit offsets address");
  ScratchBuffer<int32_t> tab(ScratchSlot::plan, K);
  column_table(g, 1, tab.data());
  std::vector<int64_t> seg(g.OC * (ncb + 1));
  block_segments<index_t>(rp, ci, g.OC, ncb, cb_size * khw, seg.data());

  const int64_t in_image = g.C * g.H * g.W, out_image = g.OC * g.OH * g.OW;
  const int64_t pooled_image = g.OC * (g.OH / 2) * (g.OW / 2);
  // With the pool fused, one image's output keeps the loop's virtual width (OH x Wq per channel,
  // `wide` elements apart: whole vectors) and is pooled from there: the valid columns are never
  // copied out (on a 28x28 plane that copy moved as much data as the loop wrote).
  const int64_t wide = nvec * VL;
  if (per_image) {
    at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
      Buffer<scalar_t> buf(group * g.image, g.slack);
      ScratchBuffer<scalar_t> stage(ScratchSlot::stage, g.OC * TL);
      ScratchBuffer<scalar_t> full(ScratchSlot::output, pooled ? std::max(group * out_image, g.OC * wide) : 1);
      for (int64_t n = n0; n < n1;) {
        int64_t m = group;  // the largest group that fits what is left, halving down to 1
        while (m > n1 - n) m /= 2;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t c = 0; c < g.C; ++c)
            prepare_channel<scalar_t>(xp + (n + i) * in_image + c * g.H * g.W, buf.data() + i * g.image + c * chan, g);
        scalar_t* dst = pooled ? full.data() : yp + n * out_image;
        if (m > 1) {
          kernel.template tiles_images<index_t>(buf.data(), g.image, m, seg.data(), ncb, ci, tab.data(), val, bias, 0,
                                                g.OC, g.OH, g.OW, g.Wq, dst, out_image, stage.data());
          if (pooled) kernel.max_pool(dst, pooled + n * pooled_image, g.OH, g.OW, true, 0, m * g.OC);
        } else if (pooled) {
          kernel.template tiles_wide<index_t>(buf.data(), seg.data(), ncb, ci, tab.data(), val, bias, 0, g.OC, g.OH,
                                              g.Wq, dst, wide);
          kernel.max_pool(dst, pooled + n * pooled_image, g.OH, g.OW, true, 0, g.OC, g.Wq, wide);
        } else {
          kernel.template tiles_table<index_t>(buf.data(), seg.data(), ncb, ci, tab.data(), val, bias, 0, g.OC, 0,
                                               ntiles, g.OH, g.OW, g.Wq, dst, stage.data());
        }
        n += m;
      }
    });
    return;
  }
  // Few images: the full output first (a temporary one when the pool is fused), pooled after.
  ScratchBuffer<scalar_t> full_all(ScratchSlot::output, pooled ? g.N * out_image : 1);
  if (pooled) yp = full_all.data();
  Buffer<scalar_t> all(g.N * g.image, g.slack);
  const int64_t NC = g.N * g.C;
  at::parallel_for(0, NC, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, g.H * g.W)),
                   [&](int64_t i0, int64_t i1) {
                     for (int64_t i = i0; i < i1; ++i)  // channel i of the batch
                       prepare_channel<scalar_t>(xp + (i / g.C) * in_image + (i % g.C) * g.H * g.W,
                                                 all.data() + (i / g.C) * g.image + (i % g.C) * chan, g);
                   });
  const int64_t spatial = g.N * ntiles;
  const int64_t nocb = std::clamp<int64_t>((4 * threads + spatial - 1) / spatial, 1, std::max<int64_t>(1, g.OC / 16));
  at::parallel_for(0, spatial * nocb, 1, [&](int64_t i0, int64_t i1) {
    ScratchBuffer<scalar_t> stage(ScratchSlot::stage, ((g.OC + nocb - 1) / nocb) * TL);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ob = i % nocb, t = (i / nocb) % ntiles, n = i / (nocb * ntiles);
      kernel.template tiles_table<index_t>(all.data() + n * g.image, seg.data(), ncb, ci, tab.data(), val, bias,
                                           ob * g.OC / nocb, (ob + 1) * g.OC / nocb, t, t + 1, g.OH, g.OW, g.Wq,
                                           yp + n * out_image, stage.data());
    }
  });
  if (pooled) kernel.max_pool(yp, pooled, g.OH, g.OW, true, 0, g.N * g.OC);
}

// `groups` groups of `lanes` images (the first groups * lanes of the batch), one image per
// vector lane: each thread interleaves its group's input, which then stays in its L2, runs
// every tile and output channel and scatters the results back (slimkit_sparse_lanes_group).
template <typename scalar_t, typename index_t>
void sparse_conv_lanes(const scalar_t* xp, const int64_t* rp, const index_t* ci, const scalar_t* val,
                       const scalar_t* bias, const Geometry& g, int64_t groups, scalar_t* yp, scalar_t* pooled) {
  const Kernel<scalar_t> kernel{};
  const int64_t lanes = kernel.lanes();
  // Channel blocks: one tile reads, per input channel, its rows plus the kernel's reach in
  // every phase plane, each row Wq positions of `lanes` images.
  const int64_t rows = slimkit_lanes_max_rows(g.OH, g.OW) + g.dh * (g.kh - 1) / g.sh;
  const int64_t window = g.sh * g.sw * rows * g.Wq * lanes * int64_t(sizeof(scalar_t));
  const int64_t cb_size = std::min(g.C, std::max(kMinChannelBlock, kLanesWindowBytes / window));
  const int64_t ncb = (g.C + cb_size - 1) / cb_size;
  const int64_t chan = g.sh * g.sw * g.plane, khw = g.kh * g.kw, K = g.C * khw;
  TORCH_CHECK((g.image + g.slack) * lanes <= INT32_MAX, "sparse_conv2d: ", lanes, " images of ", g.image,
              " prepared elements are more than the kernel's 32-bit offsets address");
  ScratchBuffer<int32_t> tab(ScratchSlot::plan, K);
  column_table(g, lanes, tab.data());
  std::vector<int64_t> seg(g.OC * (ncb + 1));
  block_segments<index_t>(rp, ci, g.OC, ncb, cb_size * khw, seg.data());
  // Each nonzero's offset, once per call for every group and tile (DirectOffsets32).
  const int64_t nnz = rp[g.OC];
  // (Scratch, not a std::vector: zero-filling it first was 1-2 % of a VGG-11 forward.)
  ScratchBuffer<int32_t> off(ScratchSlot::offsets, nnz);
  for (int64_t z = 0; z < nnz; ++z) off.data()[z] = tab.data()[ci[z]];
  const cpu::LanesGeometry lg{g.C, g.H, g.W, g.sh, g.sw, g.ph, g.pw, g.Hq, g.Wq, g.plane, chan, g.OH, g.OW};
  const int64_t in_image = g.C * g.H * g.W, out_image = g.OC * g.OH * g.OW;
  const int64_t pooled_image = g.OC * (g.OH / 2) * (g.OW / 2);
  at::parallel_for(0, groups, 1, [&](int64_t q0, int64_t q1) {
    Buffer<scalar_t> buf(lanes * g.image, lanes * g.slack);
    ScratchBuffer<scalar_t> stage(ScratchSlot::stage, g.OC * kLanesStagePositions * lanes);
    ScratchBuffer<scalar_t> full(ScratchSlot::output, pooled ? lanes * out_image : 1);
    for (int64_t q = q0; q < q1; ++q) {
      scalar_t* dst = pooled ? full.data() : yp + q * lanes * out_image;
      kernel.lanes_group(xp + q * lanes * in_image, in_image, lanes, lg, buf.data(), seg.data(), ncb, off.data(), val,
                         bias, 0, g.OC, dst, out_image, stage.data(),
                         pooled ? pooled + q * lanes * pooled_image : nullptr, pooled_image);
    }
  });
}

// Taps that read only padding: on a plane smaller than the kernel's reach (a 3x3 convolution
// with padding 1 on a 1x1 input reads real input through its centre tap alone) the other
// taps multiply zeros. Their nonzeros are dropped before the loop (8 of every 9 on a 1x1
// plane, where they were almost all of the work); the result is the same. Returns false when
// every tap reads some input (nothing to drop).
template <typename scalar_t, typename index_t>
bool drop_padding_taps(const int64_t* rp, const index_t* ci, const scalar_t* val, const Geometry& g,
                       std::vector<int64_t>& rp2, std::vector<index_t>& ci2, std::vector<scalar_t>& val2) {
  auto reads_input = [](int64_t tap, int64_t dil, int64_t stride, int64_t pad, int64_t out, int64_t in) {
    for (int64_t o = 0; o < out; ++o) {
      const int64_t i = o * stride + tap * dil - pad;
      if (i >= 0 && i < in) return true;
    }
    return false;
  };
  const int64_t khw = g.kh * g.kw;
  std::vector<char> live(khw);
  bool all = true;
  for (int64_t r = 0; r < g.kh; ++r)
    for (int64_t s = 0; s < g.kw; ++s) {
      live[r * g.kw + s] = reads_input(r, g.dh, g.sh, g.ph, g.OH, g.H) && reads_input(s, g.dw, g.sw, g.pw, g.OW, g.W);
      all = all && live[r * g.kw + s];
    }
  if (all) return false;
  std::vector<char> live_col(g.C * khw);  // per weight column, without a division per nonzero
  for (int64_t c = 0; c < g.C; ++c) std::memcpy(live_col.data() + c * khw, live.data(), khw);
  int64_t kept = 0;
  for (int64_t z = 0; z < rp[g.OC]; ++z) kept += live_col[ci[z]];
  rp2.assign(g.OC + 1, 0);
  ci2.resize(kept + 1);  // + 1: the branchless loop below writes one past the last kept nonzero
  val2.resize(kept + 1);
  int64_t k = 0;
  for (int64_t oc = 0; oc < g.OC; ++oc) {
    for (int64_t z = rp[oc]; z < rp[oc + 1]; ++z) {
      ci2[k] = ci[z];
      val2[k] = val[z];
      k += live_col[ci[z]];  // written always, kept only when live (no branch)
    }
    rp2[oc + 1] = k;
  }
  return true;
}

// The checks of the columns, the dropping of padding taps, then the convolution.
template <typename scalar_t, typename index_t>
void sparse_conv_run(const scalar_t* xp, const int64_t* rp, const index_t* ci, const scalar_t* val,
                     const scalar_t* bias, const Geometry& g, scalar_t* yp, scalar_t* pooled) {
  const Kernel<scalar_t> kernel{};
  check_columns<scalar_t, index_t>(kernel, ci, rp[g.OC], g.C * g.kh * g.kw);
  std::vector<int64_t> rp2;
  std::vector<index_t> ci2;
  std::vector<scalar_t> val2;
  if (drop_padding_taps<scalar_t, index_t>(rp, ci, val, g, rp2, ci2, val2))
    sparse_conv_impl<scalar_t, index_t>(xp, rp2.data(), ci2.data(), val2.data(), bias, g, yp, pooled);
  else
    sparse_conv_impl<scalar_t, index_t>(xp, rp, ci, val, bias, g, yp, pooled);
}

// The convolution into `out` (N x OC x OH x OW), or with relu_pool into `out` of
// N x OC x OH/2 x OW/2 (sparse_conv2d_relu_pool).
at::Tensor sparse_conv2d_common(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                const at::Tensor& values, at::IntArrayRef weight_shape,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, bool relu_pool) {
  const sparse_conv::Args a = sparse_conv::check_args(input, row_ptr, col_idx, values, weight_shape, bias, stride,
                                                      padding, dilation, at::kCPU);
  TORCH_CHECK(!relu_pool || (a.OH >= 2 && a.OW >= 2), "sparse_conv2d_relu_pool: the output plane ", a.OH, "x", a.OW,
              " is smaller than the 2x2 pooling window");
  Geometry g{};
  g.N = a.N; g.C = a.C; g.H = a.H; g.W = a.W; g.OC = a.OC; g.kh = a.kh; g.kw = a.kw;
  g.sh = a.sh; g.sw = a.sw; g.ph = a.ph; g.pw = a.pw; g.dh = a.dh; g.dw = a.dw; g.OH = a.OH; g.OW = a.OW;
  g.Hp = g.H + 2 * g.ph;
  g.Wp = g.W + 2 * g.pw;
  g.Hq = (g.Hp + g.sh - 1) / g.sh;
  g.Wq = (g.Wp + g.sw - 1) / g.sw;
  g.plane = g.Hq * g.Wq;
  g.image = g.C * g.sh * g.sw * g.plane;
  g.slack = g.Wq + 128;  // reads of the last plane run past it by < Wq + one vector

  // row_ptr as int64 (read in place, or an int32 one widened here: no tensor op per call)
  std::vector<int64_t> rp_wide;
  const int64_t* rpp = nullptr;
  if (row_ptr.scalar_type() == at::kLong) {
    rpp = row_ptr.const_data_ptr<int64_t>();
  } else {
    const int32_t* r32 = row_ptr.const_data_ptr<int32_t>();
    rp_wide.assign(r32, r32 + g.OC + 1);
    rpp = rp_wide.data();
  }
  sparse_conv::check_row_ptr(rpp, g.OC, col_idx.numel());  // col_idx is checked by the plan

  at::Tensor out = relu_pool ? at::empty({g.N, g.OC, g.OH / 2, g.OW / 2}, input.options())
                             : at::empty({g.N, g.OC, g.OH, g.OW}, input.options());
  if (g.N == 0) return out;
  const at::Tensor x = input.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_conv2d_cpu", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* vp = values.const_data_ptr<scalar_t>();
    scalar_t* yp = relu_pool ? nullptr : out.mutable_data_ptr<scalar_t>();
    scalar_t* pp = relu_pool ? out.mutable_data_ptr<scalar_t>() : nullptr;
    if (col_idx.scalar_type() == at::kInt)
      sparse_conv_run<scalar_t, int32_t>(xp, rpp, col_idx.const_data_ptr<int32_t>(), vp, bp, g, yp, pp);
    else
      sparse_conv_run<scalar_t, int64_t>(xp, rpp, col_idx.const_data_ptr<int64_t>(), vp, bp, g, yp, pp);
  });
  return out;
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                             const at::Tensor& values, at::IntArrayRef weight_shape,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  return sparse_conv2d_common(input, row_ptr, col_idx, values, weight_shape, bias, stride, padding, dilation, false);
}

at::Tensor sparse_conv2d_relu_pool_cpu(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                       const at::Tensor& values, at::IntArrayRef weight_shape,
                                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  return sparse_conv2d_common(input, row_ptr, col_idx, values, weight_shape, bias, stride, padding, dilation, true);
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CPU, m) {
  m.impl("sparse_conv2d", &slimkit::sparse_conv2d_cpu);
  m.impl("sparse_conv2d_relu_pool", &slimkit::sparse_conv2d_relu_pool_cpu);
}
