// The tree-attention chunk kernel compiled for three ISAs (see w4a16_isa.cpp for why the pragmas
// follow every #include).
#include "tree_attention_isa.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace specdec::cpu::avx512 {
#include "specdec/vec_math.inc"
#include "tree_attention_kernel.inc"
}  // namespace specdec::cpu::avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace specdec::cpu::avx2 {
#include "specdec/vec_math.inc"
#include "tree_attention_kernel.inc"
}  // namespace specdec::cpu::avx2
#pragma GCC pop_options

namespace specdec::cpu::generic {
#include "specdec/vec_math.inc"
#include "tree_attention_kernel.inc"
}  // namespace specdec::cpu::generic
