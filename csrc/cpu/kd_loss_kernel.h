// kd_loss inner loops, compiled once per instruction set. Include after
// <ATen/cpu/vec/vec.h> and <ATen/cpu/vec/functional.h> with SLIMKIT_ISA_NS set to
// the namespace of this ISA (base, avx2, avx512); see kd_gmm_kernels.h.
//
// Everything here lives in slimkit::cpu::SLIMKIT_ISA_NS, and uses C math
// functions (::exp, ::log) rather than std:: inline wrappers or templates, so
// that no function compiled for AVX2/AVX-512 shares a linker name with one
// compiled for the baseline ISA.
//
// Forward, one pass over each row (online softmax). Per vector lane we keep the
// running maxima m_s, m_t of the raw logits and
//   zs  = sum exp(b),  b = (s - m_s) / T          (student at temperature T)
//   zt  = sum exp(a),  a = (t - m_t) / T          (teacher at temperature T)
//   w   = sum exp(a) * (a - b)                    (for the KL cross term)
//   zs1 = sum exp(s - m_s)                        (student at T = 1, for CE)
// A row is read in blocks of kBlock vectors: the block's maxima first (from L1),
// one rescale of the state if a maximum grew,
//   zs *= e^-ds, zt *= e^-dt, zs1 *= e^-(T ds), w = e^-dt (w + (ds - dt) zt)
// (ds, dt the growth of m_s / T, m_t / T), then the block's exponentials. So each
// element costs one exp per term, and KL = w / zt - log zt + log zs exactly, with
// a, b small near the maxima (no cancellation for huge logits).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace slimkit {
namespace cpu {
namespace SLIMKIT_ISA_NS {
namespace kd_detail {

using at::vec::Vectorized;

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Converting loads/stores of a block for half / bfloat16 (identity for float, double).
template <typename scalar_t>
inline void load_block(const scalar_t* src, typename Acc<scalar_t>::type* dst, int64_t n) {
  using acc_t = typename Acc<scalar_t>::type;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  } else {
    constexpr int64_t W = Vectorized<scalar_t>::size();
    constexpr int64_t Wf = Vectorized<float>::size();
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + Wf);
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

template <typename scalar_t>
inline void store_block(const typename Acc<scalar_t>::type* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, typename Acc<scalar_t>::type>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  } else {
    constexpr int64_t W = Vectorized<scalar_t>::size();
    constexpr int64_t Wf = Vectorized<float>::size();
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      auto v = at::vec::convert_from_float<scalar_t>(Vectorized<float>::loadu(src + i),
                                                     Vectorized<float>::loadu(src + i + Wf));
      v.store(dst + i);
    }
    for (; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

template <typename acc_t>
inline Vectorized<acc_t> vexp(const Vectorized<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return x.exp_u20();  // <= 20 ulp (about 1e-6 relative), inputs below ln(FLT_MIN) give 0
  } else {
    return x.exp();
  }
}

constexpr int64_t kBlock = 16;  // vectors per block

// One row of the forward. Writes stats[0..5) and kl / ce (ce: -log p_s(y), or 0).
template <typename scalar_t, bool KL, bool CE>
void forward_row(const scalar_t* s_row, const scalar_t* t_row, int64_t C, double inv_t, int64_t y,
                 typename Acc<scalar_t>::type* stats, double* kl_out, double* ce_out) {
  using acc_t = typename Acc<scalar_t>::type;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  __at_align__ acc_t sbuf[kConvert ? kBlock * V : 1];
  __at_align__ acc_t tbuf[kConvert ? kBlock * V : 1];
  const Vec vinv(static_cast<acc_t>(inv_t));
  // Lane state, started from the first vector so that every rescale is finite; when
  // the row is shorter than a vector, the lanes past it repeat element 0 (they hold
  // a finite maximum and zero sums, so they add nothing below).
  Vec ms, mt, zs(0), zt(0), w(0), zs1(0);
  {
    const int64_t n0 = C < V ? C : V;
    const acc_t* sp;
    const acc_t* tp = nullptr;
    if constexpr (kConvert) {
      load_block(s_row, sbuf, n0);
      if (KL) load_block(t_row, tbuf, n0);
      sp = sbuf;
      tp = tbuf;
    } else {
      sp = s_row;
      tp = t_row;
    }
    ms = Vec::set(Vec(sp[0]), Vec::loadu(sp, n0), n0);
    mt = KL ? Vec::set(Vec(tp[0]), Vec::loadu(tp, n0), n0) : Vec(0);
  }
  int64_t j = 0;
  while (j < C) {
    const int64_t left = C - j;
    const int64_t nfull = left / V >= kBlock ? kBlock : left / V;
    const int64_t tail = nfull < kBlock ? left - nfull * V : 0;  // < V, only in the last block
    const int64_t nelem = nfull * V + tail;
    const acc_t* sp;
    const acc_t* tp = nullptr;
    if constexpr (kConvert) {
      load_block(s_row + j, sbuf, nelem);
      if (KL) load_block(t_row + j, tbuf, nelem);
      sp = sbuf;
      tp = tbuf;
    } else {
      sp = s_row + j;
      tp = KL ? t_row + j : nullptr;
    }
    // The partial vector at the end: lanes past the row take the lane's current
    // maximum (so they move nothing) and are masked out of the sums below.
    Vec s_tail, t_tail, mask_tail;
    if (tail) {
      s_tail = Vec::set(ms, Vec::loadu(sp + nfull * V, tail), tail);
      if (KL) t_tail = Vec::set(mt, Vec::loadu(tp + nfull * V, tail), tail);
      mask_tail = Vec::set(Vec(0), Vec(1), tail);
    }
    // 1. block maxima and one rescale.
    Vec bms = ms, bmt = mt;
    for (int64_t v = 0; v < nfull; ++v) {
      bms = at::vec::maximum(bms, Vec::loadu(sp + v * V));
      if (KL) bmt = at::vec::maximum(bmt, Vec::loadu(tp + v * V));
    }
    if (tail) {
      bms = at::vec::maximum(bms, s_tail);
      if (KL) bmt = at::vec::maximum(bmt, t_tail);
    }
    {
      const Vec raw = ms - bms;  // <= 0
      if (KL) {
        const Vec ds = raw * vinv, dt = (mt - bmt) * vinv;  // both <= 0
        const Vec ft = vexp<acc_t>(dt);
        w = ft * at::vec::fmadd(dt - ds, zt, w);
        zt = zt * ft;
        zs = zs * vexp<acc_t>(ds);
      }
      if (CE) zs1 = zs1 * vexp<acc_t>(raw);
      ms = bms;
      mt = bmt;
    }
    // 2. the block's exponentials.
    auto body = [&](const Vec& sv, const Vec& tv, const Vec* mask) {
      const Vec d = sv - ms;
      if (KL) {
        const Vec b = d * vinv;
        const Vec a = (tv - mt) * vinv;
        Vec es = vexp<acc_t>(b), et = vexp<acc_t>(a);
        if (mask) {
          es = es * *mask;
          et = et * *mask;
        }
        zs = zs + es;
        zt = zt + et;
        w = at::vec::fmadd(et, a - b, w);
      }
      if (CE) {
        Vec e1 = vexp<acc_t>(d);
        if (mask) e1 = e1 * *mask;
        zs1 = zs1 + e1;
      }
    };
    for (int64_t v = 0; v < nfull; ++v) {
      body(Vec::loadu(sp + v * V), KL ? Vec::loadu(tp + v * V) : Vec(0), nullptr);
    }
    if (tail) body(s_tail, t_tail, &mask_tail);
    j += nelem;
  }
  // Lanes -> one row: rescale every lane to the row maxima (NaN if any is NaN), then sum.
  __at_align__ acc_t lm[V];
  ms.store(lm);
  acc_t Ms = lm[0];
  for (int64_t l = 1; l < V; ++l) Ms = (Ms != Ms || lm[l] != lm[l]) ? NAN : (lm[l] > Ms ? lm[l] : Ms);
  acc_t Mt = 0;
  if (KL) {
    mt.store(lm);
    Mt = lm[0];
    for (int64_t l = 1; l < V; ++l) Mt = (Mt != Mt || lm[l] != lm[l]) ? NAN : (lm[l] > Mt ? lm[l] : Mt);
  }
  const Vec raw = ms - Vec(Ms);
  if (KL) {
    const Vec ds = raw * vinv, dt = (mt - Vec(Mt)) * vinv;
    const Vec ft = vexp<acc_t>(dt);
    w = ft * at::vec::fmadd(dt - ds, zt, w);
    zt = zt * ft;
    zs = zs * vexp<acc_t>(ds);
  }
  if (CE) zs1 = zs1 * vexp<acc_t>(raw);
  auto hsum = [](const Vec& v) {
    __at_align__ acc_t buf[V];
    v.store(buf);
    double acc = 0;
    for (int64_t l = 0; l < V; ++l) acc += buf[l];
    return acc;
  };
  struct {
    double ms, zs, zt, w, zs1;
  } st{static_cast<double>(Ms), KL ? hsum(zs) : 0.0, KL ? hsum(zt) : 0.0, KL ? hsum(w) : 0.0,
       CE ? hsum(zs1) : 0.0};

  const double log_zs = KL ? ::log(st.zs) : 0.0;
  const double log_zt = KL ? ::log(st.zt) : 0.0;
  const double log_zs1 = CE ? ::log(st.zs1) : 0.0;
  stats[0] = static_cast<acc_t>(st.ms);
  stats[1] = Mt;
  stats[2] = static_cast<acc_t>(log_zs);
  stats[3] = static_cast<acc_t>(log_zt);
  stats[4] = static_cast<acc_t>(log_zs1);
  *kl_out = KL ? st.w / st.zt - log_zt + log_zs : 0.0;
  *ce_out = (CE && y >= 0) ? st.ms + log_zs1 - static_cast<double>(s_row[y]) : 0.0;
}

// One row of the backward: g = ckl (p_s^T - p_t^T) + cce (p_s - onehot(y)).
template <typename scalar_t, bool KL, bool CE>
void backward_row(const scalar_t* s_row, const scalar_t* t_row, scalar_t* g_row, int64_t C,
                  const typename Acc<scalar_t>::type* stats, double inv_t, double ckl, double cce, int64_t y) {
  using acc_t = typename Acc<scalar_t>::type;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  constexpr int64_t kChunk = kBlock * V;
  const Vec vinv(static_cast<acc_t>(inv_t));
  const Vec ms(stats[0]), mt(stats[1]), lzs(stats[2]), lzt(stats[3]), lzs1(stats[4]);
  const Vec vkl(static_cast<acc_t>(ckl)), vce(static_cast<acc_t>(cce));
  __at_align__ acc_t sbuf[kConvert ? kChunk : 1];
  __at_align__ acc_t tbuf[kConvert ? kChunk : 1];
  __at_align__ acc_t gbuf[kConvert ? kChunk : 1];
  for (int64_t j = 0; j < C; j += kChunk) {
    const int64_t n = C - j < kChunk ? C - j : kChunk;
    const acc_t* sp;
    const acc_t* tp = nullptr;
    acc_t* gp;
    if constexpr (kConvert) {
      load_block(s_row + j, sbuf, n);
      if (KL) load_block(t_row + j, tbuf, n);
      sp = sbuf;
      tp = tbuf;
      gp = gbuf;
    } else {
      sp = s_row + j;
      tp = KL ? t_row + j : nullptr;
      gp = g_row + j;
    }
    for (int64_t v = 0; v < n; v += V) {
      const int64_t cnt = n - v < V ? n - v : V;
      const Vec sv = cnt == V ? Vec::loadu(sp + v) : Vec::loadu(sp + v, cnt);
      const Vec d = sv - ms;
      Vec g(0);
      if (KL) {
        const Vec tv = cnt == V ? Vec::loadu(tp + v) : Vec::loadu(tp + v, cnt);
        const Vec ps = vexp<acc_t>(at::vec::fmsub(d, vinv, lzs));
        const Vec pt = vexp<acc_t>(at::vec::fmsub(tv - mt, vinv, lzt));
        g = vkl * (ps - pt);
      }
      if (CE) g = at::vec::fmadd(vce, vexp<acc_t>(d - lzs1), g);
      if (cnt == V) {
        g.store(gp + v);
      } else {
        g.store(gp + v, cnt);
      }
    }
    if (CE && y >= j && y < j + n) gp[y - j] -= static_cast<acc_t>(cce);
    if constexpr (kConvert) store_block(gbuf, g_row + j, n);
  }
}

template <typename scalar_t, bool KL, bool CE>
void forward_rows(const KdArgs& a, int64_t r0, int64_t r1) {
  using acc_t = typename Acc<scalar_t>::type;
  const auto* s = static_cast<const scalar_t*>(a.student);
  const auto* t = static_cast<const scalar_t*>(a.teacher);
  auto* stats = static_cast<acc_t*>(a.stats);
  for (int64_t i = r0; i < r1; ++i) {
    int64_t y = -1;
    if (CE) {
      y = a.labels[i];
      if (y == a.ignore_index) y = -1;
    }
    forward_row<scalar_t, KL, CE>(s + i * a.C, KL ? t + i * a.C : nullptr, a.C, a.inv_t, y, stats + i * 5,
                                  a.row_loss + i * 2, a.row_loss + i * 2 + 1);
  }
}

template <typename scalar_t, bool KL, bool CE>
void backward_rows(const KdArgs& a, int64_t r0, int64_t r1) {
  using acc_t = typename Acc<scalar_t>::type;
  const auto* s = static_cast<const scalar_t*>(a.student);
  const auto* t = static_cast<const scalar_t*>(a.teacher);
  auto* g = static_cast<scalar_t*>(a.grad);
  const auto* stats = static_cast<const acc_t*>(a.stats);
  for (int64_t i = r0; i < r1; ++i) {
    int64_t y = -1;
    double cce = 0.0;
    if (CE) {
      y = a.labels[i];
      if (y == a.ignore_index) {
        y = -1;
      } else {
        cce = a.cce;
      }
    }
    backward_row<scalar_t, KL, CE>(s + i * a.C, KL ? t + i * a.C : nullptr, g + i * a.C, a.C, stats + i * 5,
                                   a.inv_t, a.ckl, cce, y);
  }
}

template <typename scalar_t, bool Forward>
void rows_dispatch_terms(const KdArgs& a, int64_t r0, int64_t r1) {
  if (a.kl && a.ce) {
    Forward ? forward_rows<scalar_t, true, true>(a, r0, r1) : backward_rows<scalar_t, true, true>(a, r0, r1);
  } else if (a.kl) {
    Forward ? forward_rows<scalar_t, true, false>(a, r0, r1) : backward_rows<scalar_t, true, false>(a, r0, r1);
  } else {
    Forward ? forward_rows<scalar_t, false, true>(a, r0, r1) : backward_rows<scalar_t, false, true>(a, r0, r1);
  }
}

template <bool Forward>
void rows_dispatch(const KdArgs& a, int64_t r0, int64_t r1) {
  switch (a.dtype) {
    case Dtype::f32:
      return rows_dispatch_terms<float, Forward>(a, r0, r1);
    case Dtype::f64:
      return rows_dispatch_terms<double, Forward>(a, r0, r1);
    case Dtype::f16:
      return rows_dispatch_terms<c10::Half, Forward>(a, r0, r1);
    case Dtype::bf16:
      return rows_dispatch_terms<c10::BFloat16, Forward>(a, r0, r1);
  }
}

}  // namespace kd_detail

void kd_forward(const KdArgs& a, int64_t r0, int64_t r1) { kd_detail::rows_dispatch<true>(a, r0, r1); }
void kd_backward(const KdArgs& a, int64_t r0, int64_t r1) { kd_detail::rows_dispatch<false>(a, r0, r1); }

}  // namespace SLIMKIT_ISA_NS
}  // namespace cpu
}  // namespace slimkit
