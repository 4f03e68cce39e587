// kd_loss and gmm_prior inner loops compiled for AVX512; see kd_gmm_isa_begin.h for
// how (a target pragma, not a compiler flag) and kd_loss.cpp for when they run.
#include "kd_gmm_kernels.h"

// Only in optimised builds: at -O0 GCC 12 hits an internal compiler error on
// ATen's vector headers under a target pragma (std::tuple of __m256 in
// vec256_bfloat16.h); a -O0 build then simply runs the baseline kernels.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    defined(__OPTIMIZE__) && !defined(SLIMKIT_NO_ISA_KERNELS)

#include "kd_gmm_isa_begin.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd")
#endif

// A target pragma does not define the ISA macros that headers test (sleef.h
// declares its vector functions only under them), so define them for the
// vector headers, as -m flags would, and drop them right after.
#if !defined(__AVX__)
#define __AVX__ 1
#define SLIMKIT_UNDEF__AVX__
#endif
#if !defined(__AVX2__)
#define __AVX2__ 1
#define SLIMKIT_UNDEF__AVX2__
#endif
#if !defined(__FMA__)
#define __FMA__ 1
#define SLIMKIT_UNDEF__FMA__
#endif
#if !defined(__F16C__)
#define __F16C__ 1
#define SLIMKIT_UNDEF__F16C__
#endif
#if !defined(__AVX512F__)
#define __AVX512F__ 1
#define SLIMKIT_UNDEF__AVX512F__
#endif
#if !defined(__AVX512BW__)
#define __AVX512BW__ 1
#define SLIMKIT_UNDEF__AVX512BW__
#endif
#if !defined(__AVX512VL__)
#define __AVX512VL__ 1
#define SLIMKIT_UNDEF__AVX512VL__
#endif
#if !defined(__AVX512DQ__)
#define __AVX512DQ__ 1
#define SLIMKIT_UNDEF__AVX512DQ__
#endif
#if !defined(__AVX512CD__)
#define __AVX512CD__ 1
#define SLIMKIT_UNDEF__AVX512CD__
#endif
#undef CPU_CAPABILITY
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#if defined(SLIMKIT_UNDEF__AVX__)
#undef __AVX__
#undef SLIMKIT_UNDEF__AVX__
#endif
#if defined(SLIMKIT_UNDEF__AVX2__)
#undef __AVX2__
#undef SLIMKIT_UNDEF__AVX2__
#endif
#if defined(SLIMKIT_UNDEF__FMA__)
#undef __FMA__
#undef SLIMKIT_UNDEF__FMA__
#endif
#if defined(SLIMKIT_UNDEF__F16C__)
#undef __F16C__
#undef SLIMKIT_UNDEF__F16C__
#endif
#if defined(SLIMKIT_UNDEF__AVX512F__)
#undef __AVX512F__
#undef SLIMKIT_UNDEF__AVX512F__
#endif
#if defined(SLIMKIT_UNDEF__AVX512BW__)
#undef __AVX512BW__
#undef SLIMKIT_UNDEF__AVX512BW__
#endif
#if defined(SLIMKIT_UNDEF__AVX512VL__)
#undef __AVX512VL__
#undef SLIMKIT_UNDEF__AVX512VL__
#endif
#if defined(SLIMKIT_UNDEF__AVX512DQ__)
#undef __AVX512DQ__
#undef SLIMKIT_UNDEF__AVX512DQ__
#endif
#if defined(SLIMKIT_UNDEF__AVX512CD__)
#undef __AVX512CD__
#undef SLIMKIT_UNDEF__AVX512CD__
#endif

#define SLIMKIT_ISA_NS avx512
#include "gmm_prior_kernel.h"
#include "kd_loss_kernel.h"
#undef SLIMKIT_ISA_NS

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

bool slimkit::cpu::avx512::compiled() { return true; }

#else  // not x86-64 GCC/clang (or -O0): no avx512 build; kd_loss.cpp never selects it, and
       // these forward to the baseline kernels so that the names still mean the same thing.

namespace slimkit {
namespace cpu {
namespace avx512 {
bool compiled() { return false; }
void kd_forward(const KdArgs& a, int64_t r0, int64_t r1) { base::kd_forward(a, r0, r1); }
void kd_backward(const KdArgs& a, int64_t r0, int64_t r1) { base::kd_backward(a, r0, r1); }
void gmm_forward(const GmmArgs& a, int64_t w0, int64_t w1, double* loss) { base::gmm_forward(a, w0, w1, loss); }
void gmm_backward(const GmmArgs& a, int64_t w0, int64_t w1, double* partial, double* loss) {
  base::gmm_backward(a, w0, w1, partial, loss);
}
}  // namespace avx512
}  // namespace cpu
}  // namespace slimkit

#endif
