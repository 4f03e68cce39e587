// The float32 inner loops of sparse_conv2d compiled for AVX2+FMA; sparse_conv.cpp
// calls them only when the CPU has both (checked at run time), so the extension
// still loads and runs on older x86 CPUs and on other architectures. How the ISA
// is switched without compiler flags: sparse_conv_isa_begin.h.
#include <cstdint>

#include "sparse_conv_isa.h"

// Only in optimised builds: at -O0 GCC 12 hits an internal compiler error on
// ATen's vector headers under a target pragma; a -O0 build runs the baseline kernel.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    defined(__OPTIMIZE__) && !defined(SLIMKIT_NO_ISA_KERNELS)

#include "sparse_conv_isa_begin.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

// A target pragma does not define the ISA macros that headers test (sleef.h
// declares its AVX2 functions only under __AVX2__), so define them for the
// vector headers, as -mavx2 -mfma would, and drop them again right after.
#if !defined(__AVX2__)
#define SLIMKIT_DEFINED_ISA_MACROS
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#endif
#undef CPU_CAPABILITY
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <ATen/cpu/vec/vec.h>
#if defined(SLIMKIT_DEFINED_ISA_MACROS)
#undef __AVX__
#undef __AVX2__
#undef __FMA__
#undef __F16C__
#undef SLIMKIT_DEFINED_ISA_MACROS
#endif

#include "sparse_conv_kernel.h"

namespace slimkit {
namespace sparse_conv_isa {

bool avx2_compiled() { return true; }

int64_t tile_len_avx2() { return slimkit_sparse_tile_len<float>(); }

void tiles_avx2(const float* in, const int64_t* seg, int64_t ncb, const int64_t* off, const float* val,
                const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW,
                int64_t Wq, float* y, float* stage) {
  slimkit_sparse_tiles<float>(in, seg, ncb, off, val, bias, oc0, oc1, t0, t1, OH, OW, Wq, y, stage);
}

bool gather_rows_avx2(const float* x, const int64_t* rp, const int32_t* ci, const float* val, const float* bias,
                      float* y, int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1) {
  return slimkit_sparse_gather_rows<float>(x, rp, ci, val, bias, y, N, K, OUT, o0, o1);
}

}  // namespace sparse_conv_isa
}  // namespace slimkit

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not an optimised x86-64 GCC/clang build: sparse_conv.cpp uses the baseline kernel

namespace slimkit {
namespace sparse_conv_isa {
bool avx2_compiled() { return false; }
int64_t tile_len_avx2() { return 0; }
void tiles_avx2(const float*, const int64_t*, int64_t, const int64_t*, const float*, const float*, int64_t, int64_t,
                int64_t, int64_t, int64_t, int64_t, int64_t, float*, float*) {}
bool gather_rows_avx2(const float*, const int64_t*, const int32_t*, const float*, const float*, float*, int64_t,
                      int64_t, int64_t, int64_t, int64_t) {
  return false;
}
}  // namespace sparse_conv_isa
}  // namespace slimkit

#endif
