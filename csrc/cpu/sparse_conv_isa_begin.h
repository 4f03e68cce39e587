// Prologue of the ISA-specific translation units of sparse_conv2d
// (sparse_conv_avx2.cpp, sparse_conv_avx512.cpp): the headers to include before
// their target pragma.
//
// slimkit compiles every csrc/cpu/*.cpp with one set of flags (no -march), so those
// files switch the target with a pragma and select ATen's matching Vectorized<>
// the way ATen's own per-ISA kernel files do (CPU_CAPABILITY, which also puts the
// vector classes in their own at::vec::AVX2 / at::vec::AVX512 namespace). Every
// non-vector header that the vector headers pull in is included here first,
// outside the pragma, so that its inline functions are compiled for the baseline
// ISA and the linker cannot pick an AVX2/AVX-512 copy of one for code that runs on
// an older CPU. The kernels themselves have internal linkage (sparse_conv_kernel.h)
// and are only called after a run-time check of the CPU (sparse_conv.cpp).
#pragma once

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
