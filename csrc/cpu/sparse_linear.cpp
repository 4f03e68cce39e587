// sparse_linear on CPU: y = x W^T + b with W (out_features x in_features) in CSR.
//
// Two kernels, by batch size N:
//
// - N < the vector batch (vector_batch below): row gather. Output feature o of
//   sample n is a sparse dot product, sum_z values[z] * x[n, col_idx[z]], over the
//   row's nonzeros, with four independent accumulators; rows are split over threads
//   when there is enough work. The weight is streamed once per sample, nnz x (value
//   + index) bytes instead of the whole dense matrix: at batch 1 this is what makes a
//   pruned fully connected layer fast (dense sgemv reads every zero).
//
// - otherwise: the batch is the vector dimension. x is transposed once into xT
//   (in_features rows of N) and each nonzero (o, k) adds values[z] * xT[k, :] to row o
//   of yT: the register-tiled inner loop of sparse_conv2d (sparse_conv_kernel.h) run
//   as a 1x1 convolution whose "image" is the batch, with its AVX2 / AVX-512 builds.
//   yT is transposed into y at the end. Work is split over (batch tile, block of rows).
//
// Working buffers are the calling thread's reusable scratch (scratch.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "scratch.h"
#include "sparse_conv_dispatch.h"
#include "sparse_linear_common.h"

namespace slimkit {
namespace {

using sparse_dispatch::Kernel;

// Nonzeros x samples per thread below which a parallel region costs more than it saves.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 14;

// Smallest batch for the batch-vector kernel: 8, one AVX2 vector of float32 (half an
// AVX-512 one); below it most lanes of every FMA would be wasted and the row gather wins.
constexpr int64_t kVectorBatch = 8;

// Rows [o0, o1) of every sample: y[n, o] = bias[o] + sum_z val[z] * x[n, ci[z]], for the
// dtypes and index types without a vector kernel (float64, int64 columns). Returns false
// if a column is outside [0, K) (skipped, never read).
template <typename scalar_t, typename index_t>
bool gather_rows(const scalar_t* x, const int64_t* rp, const index_t* ci, const scalar_t* val, const scalar_t* bias,
                 scalar_t* y, int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1) {
  bool ok = true;
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* xn = x + n * K;
    scalar_t* yn = y + n * OUT;
    for (int64_t o = o0; o < o1; ++o) {
      scalar_t acc[4] = {0, 0, 0, 0};
      for (int64_t z = rp[o]; z < rp[o + 1]; ++z) {
        const int64_t c = ci[z];
        if (c < 0 || c >= K) {
          ok = false;
          continue;
        }
        acc[z & 3] += val[z] * xn[c];
      }
      yn[o] = (bias ? bias[o] : scalar_t(0)) + ((acc[0] + acc[1]) + (acc[2] + acc[3]));
    }
  }
  return ok;
}

// dst (cols x rows) = transpose of src (rows x cols), both row-major, in 8 x 64 blocks:
// each dst row segment is written contiguously from 8 source rows (strided loads are
// cheaper than strided stores). Serial: the matrices are small (a batch of activations)
// and a parallel region costs more than it saves here.
template <typename scalar_t>
void transpose(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols) {
  constexpr int64_t RB = 8, CB = 64;
  for (int64_t r0 = 0; r0 < rows; r0 += RB) {
    const int64_t r1 = std::min(rows, r0 + RB);
    for (int64_t c0 = 0; c0 < cols; c0 += CB) {
      const int64_t c1 = std::min(cols, c0 + CB);
      if (r1 - r0 == RB) {
        for (int64_t c = c0; c < c1; ++c) {
          scalar_t* d = dst + c * rows + r0;
          const scalar_t* s = src + r0 * cols + c;
#pragma GCC unroll 8
          for (int64_t r = 0; r < RB; ++r) d[r] = s[r * cols];
        }
      } else {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

// Computes y; returns false (y incomplete) if a column index is outside [0, K).
template <typename scalar_t, typename index_t>
bool sparse_linear_impl(const scalar_t* x, const int64_t* rp, const index_t* ci, const scalar_t* val,
                        const scalar_t* bias, scalar_t* y, int64_t N, int64_t K, int64_t OUT) {
  const int64_t nnz = rp[OUT];
  const Kernel<scalar_t> kernel{};
  const int64_t TL = kernel.tile_len();
  const int64_t threads = at::get_num_threads();

  if (N < kVectorBatch) {
    const int64_t work = std::max<int64_t>(1, nnz * N);
    const int64_t grain = std::max<int64_t>(1, (OUT * kMinWorkPerThread) / work);
    std::atomic<bool> ok{true};
    at::parallel_for(0, OUT, grain, [&](int64_t o0, int64_t o1) {
      bool part;
      if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int32_t>)
        part = kernel.gather_rows(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
      else
        part = gather_rows<scalar_t, index_t>(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
      if (!part) ok = false;
    });
    return ok;
  }

  // xT: K rows of N, then one tile of zeros that the last row's partial vector reads.
  ScratchBuffer<scalar_t> xT(ScratchSlot::input, K * N + TL);
  std::fill(xT.data() + K * N, xT.data() + K * N + TL, scalar_t(0));
  transpose<scalar_t>(x, xT.data(), N, K);
  // The plan: per nonzero its row offset in xT; per output row its [first, end) nonzero.
  ScratchBuffer<int64_t> plan(ScratchSlot::plan, nnz + 2 * OUT);
  int64_t* off = plan.data();
  int64_t* seg = plan.data() + nnz;
  bool bad = false;
  for (int64_t z = 0; z < nnz; ++z) {
    const int64_t c = ci[z];
    bad |= (c < 0) | (c >= K);
    off[z] = c * N;
  }
  if (bad) return false;
  for (int64_t o = 0; o < OUT; ++o) {
    seg[2 * o] = rp[o];
    seg[2 * o + 1] = rp[o + 1];
  }
  ScratchBuffer<scalar_t> yT(ScratchSlot::output, OUT * N);
  const int64_t ntiles = slimkit_sparse_num_tiles(N, TL / kTile);
  const int64_t nob = std::clamp<int64_t>((4 * threads + ntiles - 1) / ntiles, 1, std::max<int64_t>(1, OUT / 16));
  const int64_t items = ntiles * nob;
  const int64_t grain = std::max<int64_t>(1, (items * kMinWorkPerThread) / std::max<int64_t>(1, nnz * N));
  at::parallel_for(0, items, grain, [&](int64_t i0, int64_t i1) {
    ScratchBuffer<scalar_t> stage(ScratchSlot::stage, ((OUT + nob - 1) / nob) * TL);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ob = i % nob, t = i / nob;
      kernel.tiles(xT.data(), seg, 1, off, val, bias, ob * OUT / nob, (ob + 1) * OUT / nob, t, t + 1, 1, N, N,
                   yT.data(), stage.data());
    }
  });
  transpose<scalar_t>(yT.data(), y, OUT, N);
  return true;
}

// First z with col_idx[z] outside [0, K), or -1 (for the error message).
template <typename index_t>
int64_t first_bad_column(const index_t* ci, int64_t nnz, int64_t K) {
  for (int64_t z = 0; z < nnz; ++z)
    if (ci[z] < 0 || ci[z] >= K) return z;
  return -1;
}

at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                             const at::Tensor& values, at::IntArrayRef weight_shape,
                             const std::optional<at::Tensor>& bias) {
  const sparse_linear::Args a =
      sparse_linear::check_args(input, row_ptr, col_idx, values, weight_shape, bias, at::kCPU);
  std::vector<int64_t> rp(a.OUT + 1);
  if (row_ptr.scalar_type() == at::kInt)
    std::copy_n(row_ptr.const_data_ptr<int32_t>(), a.OUT + 1, rp.begin());
  else
    std::copy_n(row_ptr.const_data_ptr<int64_t>(), a.OUT + 1, rp.begin());
  const int64_t nnz = col_idx.numel();
  sparse_conv::check_row_ptr(rp.data(), a.OUT, nnz, "sparse_linear");
  at::Tensor out = at::empty({a.N, a.OUT}, input.options());
  if (a.N == 0) return out;
  const at::Tensor x = input.contiguous();
  const at::Tensor vals = values.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_linear_cpu", [&] {
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    if (col_idx.scalar_type() == at::kInt)
      ok = sparse_linear_impl<scalar_t, int32_t>(x.const_data_ptr<scalar_t>(), rp.data(),
                                            col_idx.const_data_ptr<int32_t>(), vals.const_data_ptr<scalar_t>(), bp,
                                            out.mutable_data_ptr<scalar_t>(), a.N, a.K, a.OUT);
    else
      ok = sparse_linear_impl<scalar_t, int64_t>(x.const_data_ptr<scalar_t>(), rp.data(),
                                            col_idx.const_data_ptr<int64_t>(), vals.const_data_ptr<scalar_t>(), bp,
                                            out.mutable_data_ptr<scalar_t>(), a.N, a.K, a.OUT);
  });
  if (!ok) {  // the kernels check every column as they read it, and never read a bad one
    const int64_t z = col_idx.scalar_type() == at::kInt
                          ? first_bad_column(col_idx.const_data_ptr<int32_t>(), nnz, a.K)
                          : first_bad_column(col_idx.const_data_ptr<int64_t>(), nnz, a.K);
    const int64_t c = col_idx.scalar_type() == at::kInt ? int64_t(col_idx.const_data_ptr<int32_t>()[z])
                                                         : col_idx.const_data_ptr<int64_t>()[z];
    TORCH_CHECK(false, "sparse_linear: col_idx[", z, "] = ", c, " is outside [0, in_features = ", a.K, ")");
  }
  return out;
}

// Layers run one after another in C++, each through sparse_linear_cpu (its checks included)
// or addmm, with ReLU in place: no Python and no dispatcher round trip between layers.
// An empty tensor in a list means "none" (no bias; no dense weight, so CSR).
at::Tensor sparse_mlp_cpu(const at::Tensor& input, at::TensorList row_ptrs, at::TensorList col_idxs,
                          at::TensorList values, at::TensorList dense_weights, at::IntArrayRef shapes,
                          at::TensorList biases, at::IntArrayRef relus) {
  const int64_t L = static_cast<int64_t>(relus.size());
  TORCH_CHECK(L >= 1, "sparse_mlp: at least one layer");
  TORCH_CHECK(static_cast<int64_t>(row_ptrs.size()) == L && static_cast<int64_t>(col_idxs.size()) == L &&
                  static_cast<int64_t>(values.size()) == L && static_cast<int64_t>(dense_weights.size()) == L &&
                  static_cast<int64_t>(biases.size()) == L && static_cast<int64_t>(shapes.size()) == 2 * L,
              "sparse_mlp: row_ptrs, col_idxs, values, dense_weights, biases and relus need one entry per layer "
              "and shapes two (out, in); got ", L, " relus and ", shapes.size(), " shape entries");
  TORCH_CHECK(input.defined() && input.dim() == 2, "sparse_mlp: input must be 2-D (batch, in_features)");
  const auto given = [](const at::Tensor& t) { return t.defined() && t.numel() > 0; };
  at::Tensor x = input.contiguous();
  for (int64_t i = 0; i < L; ++i) {
    const std::optional<at::Tensor> bias = given(biases[i]) ? std::optional<at::Tensor>(biases[i]) : std::nullopt;
    const int64_t out = shapes[2 * i], in = shapes[2 * i + 1];
    TORCH_CHECK(x.size(1) == in, "sparse_mlp: layer ", i, " takes ", in, " features, its input has ", x.size(1));
    if (given(dense_weights[i])) {
      const at::Tensor& w = dense_weights[i];
      TORCH_CHECK(w.dim() == 2 && w.size(0) == out && w.size(1) == in, "sparse_mlp: layer ", i,
                  " dense weight must be (", out, ", ", in, "), got ", w.sizes());
      TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device(), "sparse_mlp: layer ", i,
                  " dense weight must be ", x.scalar_type(), " on ", x.device());
      if (bias.has_value()) {
        TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out && bias->scalar_type() == x.scalar_type() &&
                        bias->device() == x.device(),
                    "sparse_mlp: layer ", i, " bias must be (", out, ",) ", x.scalar_type(), " on ", x.device());
        x = at::addmm(*bias, x, w.t());
      } else {
        x = at::mm(x, w.t());
      }
    } else {
      TORCH_CHECK(given(values[i]) && row_ptrs[i].defined() && col_idxs[i].defined(), "sparse_mlp: layer ", i,
                  " needs a dense weight or all of row_ptr, col_idx and values");
      const int64_t shape[2] = {out, in};
      x = sparse_linear_cpu(x, row_ptrs[i], col_idxs[i], values[i], at::IntArrayRef(shape, 2), bias);
    }
    if (relus[i] != 0) x.relu_();
  }
  return x;
}

}  // namespace
}  // namespace slimkit

TORCH_LIBRARY_IMPL(slimkit, CPU, m) {
  m.impl("sparse_linear", &slimkit::sparse_linear_cpu);
  m.impl("sparse_mlp", &slimkit::sparse_mlp_cpu);
}
