// The float32 sparse_conv2d / sparse_linear kernels compiled for wider ISAs (sparse_conv_avx2.cpp,
// sparse_conv_avx512.cpp); sparse_conv.cpp picks one at run time. *_compiled()
// says whether the file was built with its kernel (x86-64, GCC/clang, optimised).
#pragma once

#include <cstdint>

namespace slimkit {
namespace sparse_conv_isa {

bool avx2_compiled();
int64_t tile_len_avx2();
void tiles_avx2(const float* in, const int64_t* seg, int64_t ncb, const int64_t* off, const float* val,
                const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW,
                int64_t Wq, float* y, float* stage);
bool gather_rows_avx2(const float* x, const int64_t* rp, const int32_t* ci, const float* val, const float* bias,
                      float* y, int64_t N, int64_t K, int64_t OUT, int64_t o0, int64_t o1);

bool avx512_compiled();
int64_t tile_len_avx512();
void tiles_avx512(const float* in, const int64_t* seg, int64_t ncb, const int64_t* off, const float* val,
                  const float* bias, int64_t oc0, int64_t oc1, int64_t t0, int64_t t1, int64_t OH, int64_t OW,
                  int64_t Wq, float* y, float* stage);

}  // namespace sparse_conv_isa
}  // namespace slimkit
