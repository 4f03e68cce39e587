// gmm_prior inner loops, compiled once per instruction set. Include after
// <ATen/cpu/vec/vec.h> with SLIMKIT_ISA_NS set (see kd_gmm_kernels.h and the
// note on linker names in kd_loss_kernel.h).
//
// One vector of weights at a time: the K log-densities
//   l_k = c_k - h_k (w - mu_k)^2,  c_k = log pi_k - (log 2pi + log_var_k) / 2,  h_k = exp(-log_var_k) / 2
// go to a K-vector stack array (never N x K), then m = max_k l_k and
// S = sum_k exp(l_k - m): -log p(w) = -(m + log S), finite even when every
// density underflows. The backward recomputes them (or, in the fused
// value-and-gradient op, is the only pass), forms the responsibilities
// r_k = exp(l_k - m) / S and accumulates, per lane, the 3K sums the parameter
// gradients need; the caller reduces the per-chunk results in a fixed order.
#pragma once

#include <cmath>
#include <cstdint>

namespace slimkit {
namespace cpu {
namespace SLIMKIT_ISA_NS {
namespace gmm_detail {

using at::vec::Vectorized;

template <typename acc_t>
inline Vectorized<acc_t> vexp(const Vectorized<acc_t>& x) {
  if constexpr (std::is_same_v<acc_t, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

template <typename acc_t>
inline double hsum(const Vectorized<acc_t>& v) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  __at_align__ acc_t buf[V];
  v.store(buf);
  double acc = 0;
  for (int64_t l = 0; l < V; ++l) acc += buf[l];
  return acc;
}

// l[k] = log pi_k N_k(w) for k < K; returns the lane maxima over k.
template <typename acc_t>
inline Vectorized<acc_t> log_densities(const Vectorized<acc_t>& w, const acc_t* mu, const acc_t* c, const acc_t* h,
                                       int64_t K, Vectorized<acc_t>* l) {
  using Vec = Vectorized<acc_t>;
  Vec m(static_cast<acc_t>(-INFINITY));
  for (int64_t k = 0; k < K; ++k) {
    const Vec d = w - Vec(mu[k]);
    const Vec lk = at::vec::fnmadd(Vec(h[k]) * d, d, Vec(c[k]));
    l[k] = lk;
    m = at::vec::maximum(m, lk);
  }
  return m;
}

template <typename acc_t>
void forward(const GmmArgs& a, int64_t w0, int64_t w1, double* loss) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const auto* wp = static_cast<const acc_t*>(a.weights);
  const auto* p = static_cast<const acc_t*>(a.params);
  const int64_t K = a.K;
  const acc_t* mu = p;
  const acc_t* c = p + K;
  const acc_t* h = p + 2 * K;
  Vec l[kGmmMaxK];
  Vec acc(0);
  for (int64_t n = w0; n < w1; n += V) {
    const int64_t cnt = w1 - n < V ? w1 - n : V;
    const Vec w = cnt == V ? Vec::loadu(wp + n) : Vec::loadu(wp + n, cnt);
    const Vec m = log_densities<acc_t>(w, mu, c, h, K, l);
    Vec S(0);
    for (int64_t k = 0; k < K; ++k) S = S + vexp<acc_t>(l[k] - m);
    Vec val = m + S.log();
    if (cnt < V) val = Vec::set(Vec(0), val, cnt);
    acc = acc + val;
  }
  *loss = -hsum<acc_t>(acc);
}

template <typename acc_t>
void backward(const GmmArgs& a, int64_t w0, int64_t w1, double* partial, double* loss) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const auto* wp = static_cast<const acc_t*>(a.weights);
  auto* gp = static_cast<acc_t*>(a.grad_w);
  const auto* p = static_cast<const acc_t*>(a.params);
  const int64_t K = a.K;
  const acc_t* mu = p;
  const acc_t* c = p + K;
  const acc_t* h = p + 2 * K;
  Vec l[kGmmMaxK];
  Vec R[kGmmMaxK], A[kGmmMaxK], Q[kGmmMaxK];
  for (int64_t k = 0; k < K; ++k) R[k] = A[k] = Q[k] = Vec(0);
  // d/dw (-log p) = sum_k r_k (w - mu_k) / var_k = 2 sum_k r_k h_k (w - mu_k); the 2 is applied at the end.
  const Vec g2(static_cast<acc_t>(2.0 * a.g));
  const bool want_loss = loss != nullptr;
  Vec acc(0);
  for (int64_t n = w0; n < w1; n += V) {
    const int64_t cnt = w1 - n < V ? w1 - n : V;
    const Vec w = cnt == V ? Vec::loadu(wp + n) : Vec::loadu(wp + n, cnt);
    const Vec m = log_densities<acc_t>(w, mu, c, h, K, l);
    Vec S(0);
    for (int64_t k = 0; k < K; ++k) {
      l[k] = vexp<acc_t>(l[k] - m);
      S = S + l[k];
    }
    Vec inv_s = Vec(1) / S;
    if (cnt < V) inv_s = Vec::set(Vec(0), inv_s, cnt);  // lanes past the end contribute nothing
    if (want_loss) {
      Vec val = m + S.log();
      if (cnt < V) val = Vec::set(Vec(0), val, cnt);
      acc = acc + val;
    }
    Vec gw(0);
    for (int64_t k = 0; k < K; ++k) {
      const Vec r = l[k] * inv_s;
      const Vec d = w - Vec(mu[k]);
      const Vec t = r * d * Vec(h[k]);
      gw = gw + t;
      R[k] = R[k] + r;
      A[k] = A[k] + t;
      Q[k] = at::vec::fmadd(t, d, Q[k]);
    }
    gw = gw * g2;
    if (cnt == V) {
      gw.store(gp + n);
    } else {
      gw.store(gp + n, cnt);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    partial[k] = hsum<acc_t>(R[k]);
    partial[K + k] = 2.0 * hsum<acc_t>(A[k]);
    partial[2 * K + k] = 2.0 * hsum<acc_t>(Q[k]);
  }
  if (want_loss) *loss = -hsum<acc_t>(acc);
}

}  // namespace gmm_detail

void gmm_forward(const GmmArgs& a, int64_t w0, int64_t w1, double* loss) {
  if (a.dtype == Dtype::f64) {
    gmm_detail::forward<double>(a, w0, w1, loss);
  } else {
    gmm_detail::forward<float>(a, w0, w1, loss);
  }
}

void gmm_backward(const GmmArgs& a, int64_t w0, int64_t w1, double* partial, double* loss) {
  if (a.dtype == Dtype::f64) {
    gmm_detail::backward<double>(a, w0, w1, partial, loss);
  } else {
    gmm_detail::backward<float>(a, w0, w1, partial, loss);
  }
}

}  // namespace SLIMKIT_ISA_NS
}  // namespace cpu
}  // namespace slimkit
