// Prologue of an ISA-specific translation unit of kd_loss / gmm_prior
// (kd_gmm_avx2.cpp, kd_gmm_avx512.cpp): the headers to include before the
// target pragma.
//
// slimkit compiles every csrc/cpu/*.cpp with one set of flags (no -march), so
// these files switch the target with a pragma and select ATen's matching
// Vectorized<> the way ATen's own per-ISA kernel files do (CPU_CAPABILITY, which
// also puts the vector classes in their own at::vec::AVX2 / at::vec::AVX512
// namespace). Every non-vector header that the vector headers pull in is
// included first, outside the pragma: their inline functions are then compiled
// for the baseline ISA here too, so the linker cannot pick an AVX-512 copy of,
// say, a c10::Half conversion for code that runs on an AVX2-only CPU. The kernel
// code itself lives in slimkit::cpu::avx2 / ::avx512 and is only called after a
// run-time check of the CPU (kd_loss.cpp). `nm -C` of the object lists no weak
// symbol outside those namespaces (tests/test_backend.py checks this).
#pragma once

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

#include "kd_gmm_kernels.h"
