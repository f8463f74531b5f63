// One W4A16 kernel source (w4a16_kernel.inc) compiled for three ISAs; the dispatcher picks one at
// run time. The target pragmas come after every #include so that no inline function from a header
// is compiled with AVX-512 and then shared with the portable path by the linker.
#include "w4a16_isa.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace specdec::cpu::avx512 {
constexpr int kRowBlock = 8, kTilesPerStep = 2, kVectorFloats = 16;  // 16 zmm accumulators
constexpr bool kFastPermute = true;  // vpermps: a nibble indexes a 16-float table in one op
#include "w4a16_kernel.inc"
}  // namespace specdec::cpu::avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace specdec::cpu::avx2 {
constexpr int kRowBlock = 3, kTilesPerStep = 2, kVectorFloats = 8;  // 3 x 2 x 2 ymm = 12 accumulators
constexpr bool kFastPermute = false;
#include "w4a16_kernel.inc"
}  // namespace specdec::cpu::avx2
#pragma GCC pop_options

namespace specdec::cpu::generic {
constexpr int kRowBlock = 2, kTilesPerStep = 1, kVectorFloats = 4;  // SSE2: 2 x 4 xmm = 8 accumulators
constexpr bool kFastPermute = false;
#include "w4a16_kernel.inc"
}  // namespace specdec::cpu::generic
