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
// over the row's nonzeros: one broadcast + (load, FMA) per vector per nonzero.
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
#include <memory>
#include <numeric>
#include <string>
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

template <typename scalar_t>
void sparse_conv_impl(const at::Tensor& x, const int64_t* rp, const int64_t* cols, const at::Tensor& values,
                      const scalar_t* bias, const Geometry& g, at::Tensor& out) {
  const Kernel<scalar_t> kernel{};
  const int64_t TL = kernel.tile_len();
  const int64_t ntiles = slimkit_sparse_num_tiles(g.OH * g.Wq, TL / kTile);

  // Channel blocks: the input window a tile reads from one channel spans the tile
  // plus the largest tap offset inside the channel's phase planes.
  const int64_t span = (g.dh * (g.kh - 1) / g.sh) * g.Wq + g.dw * (g.kw - 1) / g.sw;
  const int64_t window = g.sh * g.sw * (TL + span) * int64_t(sizeof(scalar_t));
  // At least kMinChannelBlock channels per block, so that each (output channel, block)
  // segment has enough nonzeros to pay for its stage round trip on large images.
  const int64_t cb_size = std::min(g.C, std::max(kMinChannelBlock, kL1WindowBytes / window));
  const int64_t ncb = (g.C + cb_size - 1) / cb_size;

  // The plan: per nonzero its input offset off = c * chan + tap[r*kw + s] (tap: the
  // offset of (r, s) inside a channel's phase planes), per (row, channel block) the
  // first nonzero. Rows must be in column order; the few that are not get sorted.
  const int64_t chan = g.sh * g.sw * g.plane, khw = g.kh * g.kw, K = g.C * khw;
  std::vector<int64_t> tap(khw);
  for (int64_t r = 0; r < g.kh; ++r)
    for (int64_t s = 0; s < g.kw; ++s) {
      const int64_t rr = r * g.dh, ss = s * g.dw;
      tap[r * g.kw + s] = ((rr % g.sh) * g.sw + ss % g.sw) * g.plane + (rr / g.sh) * g.Wq + ss / g.sw;
    }
  const int64_t nnz = rp[g.OC];
  const bool small = K <= INT32_MAX;
  std::vector<int64_t> off(nnz), seg(g.OC * (ncb + 1));
  std::vector<char> unsorted(g.OC, 0);
  // Offsets and segments of row oc, its nonzeros visited in the order src(z).
  const auto plan_row = [&](int64_t oc, auto&& src) {
    int64_t k = 0;
    for (int64_t z = rp[oc]; z < rp[oc + 1]; ++z) {
      const int64_t col = cols[src(z)];
      const int64_t c = small ? int64_t(uint32_t(col) / uint32_t(khw)) : col / khw;
      while (k * cb_size <= c) seg[oc * (ncb + 1) + k++] = z;
      off[z] = c * chan + tap[col - c * khw];
    }
    while (k <= ncb) seg[oc * (ncb + 1) + k++] = rp[oc + 1];
  };
  const auto plan_checked = [&](int64_t oc) {
    int64_t prev = -1;
    bool sorted = true;
    for (int64_t z = rp[oc]; z < rp[oc + 1]; ++z) {
      const int64_t col = cols[z];
      TORCH_CHECK(col >= 0 && col < K, "sparse_conv2d: col_idx[", z, "] = ", col,
                  " is outside [0, in_channels*kh*kw = ", K, ")");
      sorted = sorted && col >= prev;
      prev = col;
    }
    if (sorted)
      plan_row(oc, [](int64_t z) { return z; });
    else
      unsorted[oc] = 1;
  };

  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = out.mutable_data_ptr<scalar_t>();
  const int64_t in_image = g.C * g.H * g.W, out_image = g.OC * g.OH * g.OW;
  const int64_t threads = at::get_num_threads();
  // Many images: one image at a time per thread, its prepared input staying in that core's
  // L2. Few: every image prepared up front, then (image, tile, output-channel block) items.
  const bool per_image = g.N >= threads && g.N > 1 && (g.N % threads == 0 || g.N >= 4 * threads);
  std::unique_ptr<Buffer<scalar_t>> all;
  if (!per_image) all = std::make_unique<Buffer<scalar_t>>(g.N * g.image, g.slack);
  const auto prepare_all = [&](int64_t i) {  // channel i of the batch
    const int64_t n = i / g.C, c = i % g.C;
    prepare_channel<scalar_t>(xp + n * in_image + c * g.H * g.W, all->data() + n * g.image + c * chan, g);
  };
  // One parallel region plans the rows and (few images) prepares the input: on a busy
  // machine every region can wait for a descheduled thread, so there are only two.
  const int64_t NC = per_image ? 0 : g.N * g.C;
  const int64_t parts = nnz + NC * g.H * g.W >= (1 << 14) ? threads : 1;
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t oc = p * g.OC / parts; oc < (p + 1) * g.OC / parts; ++oc) plan_checked(oc);
      for (int64_t i = p * NC / parts; i < (p + 1) * NC / parts; ++i) prepare_all(i);
    }
  });
  const scalar_t* val = values.const_data_ptr<scalar_t>();
  std::vector<scalar_t> val_sorted;
  if (std::find(unsorted.begin(), unsorted.end(), 1) != unsorted.end()) {
    val_sorted.assign(val, val + nnz);
    std::vector<int64_t> order(nnz);
    for (int64_t oc = 0; oc < g.OC; ++oc) {
      if (!unsorted[oc]) continue;
      const auto b = order.begin() + rp[oc], e = order.begin() + rp[oc + 1];
      std::iota(b, e, rp[oc]);
      std::stable_sort(b, e, [&](int64_t i, int64_t j) { return cols[i] < cols[j]; });
      plan_row(oc, [&](int64_t z) { return order[z]; });
      for (int64_t z = rp[oc]; z < rp[oc + 1]; ++z) val_sorted[z] = val[order[z]];
    }
    val = val_sorted.data();
  }

  if (per_image) {
    at::parallel_for(0, g.N, 1, [&](int64_t n0, int64_t n1) {
      Buffer<scalar_t> buf(g.image, g.slack);
      ScratchBuffer<scalar_t> stage(ScratchSlot::stage, g.OC * TL);
      for (int64_t n = n0; n < n1; ++n) {
        for (int64_t c = 0; c < g.C; ++c)
          prepare_channel<scalar_t>(xp + n * in_image + c * g.H * g.W, buf.data() + c * chan, g);
        kernel.tiles(buf.data(), seg.data(), ncb, off.data(), val, bias, 0, g.OC, 0, ntiles, g.OH, g.OW,
                     g.Wq, yp + n * out_image, stage.data());
      }
    });
    return;
  }
  const int64_t spatial = g.N * ntiles;
  const int64_t nocb = std::clamp<int64_t>((4 * threads + spatial - 1) / spatial, 1, std::max<int64_t>(1, g.OC / 16));
  at::parallel_for(0, spatial * nocb, 1, [&](int64_t i0, int64_t i1) {
    ScratchBuffer<scalar_t> stage(ScratchSlot::stage, ((g.OC + nocb - 1) / nocb) * TL);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ob = i % nocb, t = (i / nocb) % ntiles, n = i / (nocb * ntiles);
      kernel.tiles(all->data() + n * g.image, seg.data(), ncb, off.data(), val, bias, ob * g.OC / nocb,
                   (ob + 1) * g.OC / nocb, t, t + 1, g.OH, g.OW, g.Wq, yp + n * out_image, stage.data());
    }
  });
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                             const at::Tensor& values, at::IntArrayRef weight_shape,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const sparse_conv::Args a = sparse_conv::check_args(input, row_ptr, col_idx, values, weight_shape, bias, stride,
                                                      padding, dilation, at::kCPU);
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

  const at::Tensor rp = row_ptr.to(at::kLong).contiguous();
  const at::Tensor ci = col_idx.to(at::kLong).contiguous();
  const int64_t* rpp = rp.const_data_ptr<int64_t>();
  const int64_t* cip = ci.const_data_ptr<int64_t>();
  const int64_t nnz = ci.numel();
  sparse_conv::check_row_ptr(rpp, g.OC, nnz);  // col_idx is checked while planning

  at::Tensor out = at::empty({g.N, g.OC, g.OH, g.OW}, input.options());
  if (g.N == 0) return out;
  const at::Tensor x = input.contiguous();
  const at::Tensor vals = values.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_conv2d_cpu", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    sparse_conv_impl<scalar_t>(x, rpp, cip, vals, bp, g, out);
  });
  return out;
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CPU, m) {
  m.impl("sparse_conv2d", &slimkit::sparse_conv2d_cpu);
}
