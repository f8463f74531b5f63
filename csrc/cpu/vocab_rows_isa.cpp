// The vocabulary-row passes (vocab_rows.inc) compiled for three ISAs (see w4a16_isa.cpp for why the
// pragmas follow every #include); vocab_rows() picks the set for the ISA chosen at run time.
#include "vocab_rows.h"

#include "specdec/cpu_isa.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace specdec::cpu::avx512 {
#include "specdec/vec_math.inc"
#include "vocab_rows.inc"
}  // namespace specdec::cpu::avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace specdec::cpu::avx2 {
#include "specdec/vec_math.inc"
#include "vocab_rows.inc"
}  // namespace specdec::cpu::avx2
#pragma GCC pop_options

namespace specdec::cpu::generic {
#include "specdec/vec_math.inc"
#include "vocab_rows.inc"
}  // namespace specdec::cpu::generic

namespace specdec::cpu {

VocabRows vocab_rows() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return {avx512::row_max, avx512::row_sum, avx512::row_exp};
    case Isa::kAvx2: return {avx2::row_max, avx2::row_sum, avx2::row_exp};
    default: return {generic::row_max, generic::row_sum, generic::row_exp};
  }
}

}  // namespace specdec::cpu
