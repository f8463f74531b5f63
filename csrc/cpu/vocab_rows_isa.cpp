// The vocabulary-row passes (vocab_rows.inc) compiled for three ISAs; vocab_rows() picks the set for the
// ISA chosen at run time.
#include "vocab_rows.h"

#include "specdec/cpu_isa.h"

#define SPECDEC_ISA_KERNEL "cpu/vocab_rows.inc"  // relative to csrc/
#include "specdec/isa_regions.inc"

namespace specdec::cpu {

VocabRows vocab_rows() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return {avx512::row_max, avx512::row_sum, avx512::row_exp};
    case Isa::kAvx2: return {avx2::row_max, avx2::row_sum, avx2::row_exp};
    default: return {generic::row_max, generic::row_sum, generic::row_exp};
  }
}

}  // namespace specdec::cpu
