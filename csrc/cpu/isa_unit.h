// The one ISA-specific translation unit, as a template: isa_base.cpp, isa_avx2.cpp and
// isa_avx512.cpp each define SLIMKIT_ISA_NS (base, avx2, avx512) and include this file,
// which compiles every CPU kernel of isa.h for that instruction set into
// slimkit::cpu::SLIMKIT_ISA_NS. isa.cpp chooses among them at run time.
//
// slimkit compiles every csrc/cpu/*.cpp with one set of flags (no -march), so the
// avx2 / avx512 units switch the target with a pragma and select ATen's matching
// Vectorized<> the way ATen's own per-ISA kernel files do (CPU_CAPABILITY, which also
// puts the vector classes in their own at::vec::AVX2 / at::vec::AVX512 namespace).
// Every non-vector header that the vector headers pull in is included first, outside
// the pragma: their inline functions are then compiled for the baseline ISA here too,
// so the linker cannot pick an AVX-512 copy of, say, a c10::Half conversion for code
// that runs on an AVX2-only CPU. The kernels themselves use no std:: inline templates
// with external linkage (kd_loss_kernel.h) or have internal linkage
// (sparse_conv_kernel.h); `nm -C` of an ISA object lists no weak symbol outside its
// namespaces (tests/test_backend.py checks this).
//
// The target strings are those ATen compiles its own AVX2 / AVX512 kernels with, so
// they need nothing from the CPU that ATen's choice of capability does not already.
#include "isa.h"

#if !defined(SLIMKIT_ISA_NS)
#error "define SLIMKIT_ISA_NS (base, avx2 or avx512) before including isa_unit.h"
#endif

#define SLIMKIT_ISA_IS_avx2 1
#define SLIMKIT_ISA_IS_avx512 2
#define SLIMKIT_ISA_CAT_(a, b) a##b
#define SLIMKIT_ISA_CAT(a, b) SLIMKIT_ISA_CAT_(a, b)
#define SLIMKIT_ISA_LEVEL SLIMKIT_ISA_CAT(SLIMKIT_ISA_IS_, SLIMKIT_ISA_NS)  // 1, 2, or base (0 in #if)

#if SLIMKIT_ISA_LEVEL == 0 || SLIMKIT_ISA_KERNELS  // the baseline build always; the others where supported

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

#include <ATen/AccumulateType.h>
#include <ATen/Config.h>
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint2x4.h>
#include <c10/util/quint4x2.h>
#include <c10/util/quint8.h>

#if SLIMKIT_ISA_LEVEL == 2
#define SLIMKIT_ISA_TARGET "avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512cd"
#elif SLIMKIT_ISA_LEVEL == 1
#define SLIMKIT_ISA_TARGET "avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt"
#endif

#if defined(SLIMKIT_ISA_TARGET)
#define SLIMKIT_ISA_PRAGMA_(x) _Pragma(#x)
#define SLIMKIT_ISA_PRAGMA(x) SLIMKIT_ISA_PRAGMA_(x)  // expands the target string, then stringizes
#if defined(__clang__)
SLIMKIT_ISA_PRAGMA(clang attribute push(__attribute__((target(SLIMKIT_ISA_TARGET))), apply_to = function))
#else
#pragma GCC push_options
SLIMKIT_ISA_PRAGMA(GCC target(SLIMKIT_ISA_TARGET))
#endif

// A target pragma does not define the ISA macros that headers test (sleef.h declares
// its vector functions only under them), so define the missing ones for the vector
// headers, as -m flags would, and drop exactly those right after.
#if !defined(__AVX__)
#define __AVX__ 1
#define SLIMKIT_UNDEF_AVX
#endif
#if !defined(__AVX2__)
#define __AVX2__ 1
#define SLIMKIT_UNDEF_AVX2
#endif
#if !defined(__FMA__)
#define __FMA__ 1
#define SLIMKIT_UNDEF_FMA
#endif
#if !defined(__F16C__)
#define __F16C__ 1
#define SLIMKIT_UNDEF_F16C
#endif
#if SLIMKIT_ISA_LEVEL == 2 && !defined(__AVX512F__)  // a baseline without AVX-512F has none of them
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define __AVX512CD__ 1
#define SLIMKIT_UNDEF_AVX512
#endif
#undef CPU_CAPABILITY
#if SLIMKIT_ISA_LEVEL == 2
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#else
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#endif  // SLIMKIT_ISA_TARGET

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#if defined(SLIMKIT_UNDEF_AVX)
#undef __AVX__
#endif
#if defined(SLIMKIT_UNDEF_AVX2)
#undef __AVX2__
#endif
#if defined(SLIMKIT_UNDEF_FMA)
#undef __FMA__
#endif
#if defined(SLIMKIT_UNDEF_F16C)
#undef __F16C__
#endif
#if defined(SLIMKIT_UNDEF_AVX512)
#undef __AVX512F__
#undef __AVX512BW__
#undef __AVX512VL__
#undef __AVX512DQ__
#undef __AVX512CD__
#endif

#include "gmm_prior_kernel.h"
#include "kd_loss_kernel.h"
#include "max_pool_kernel.h"
#include "sparse_conv_kernel.h"
#include "sparse_conv_lanes.h"

#if defined(SLIMKIT_ISA_TARGET)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#endif  // built for this ISA (else the unit is empty and isa.cpp never selects it)
