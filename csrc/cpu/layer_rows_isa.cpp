// The Llama-layer row passes (layer_rows.inc) compiled for three ISAs; layer_rows() picks the set for the
// ISA chosen at run time.
#include "layer_rows.h"

#include "specdec/cpu_isa.h"

#define SPECDEC_ISA_KERNEL "cpu/layer_rows.inc"  // relative to csrc/
#include "specdec/isa_regions.inc"

namespace specdec::cpu {

LayerRows layer_rows() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return {avx512::rms_norm_row, avx512::silu_mul_row};
    case Isa::kAvx2: return {avx2::rms_norm_row, avx2::silu_mul_row};
    default: return {generic::rms_norm_row, generic::silu_mul_row};
  }
}

}  // namespace specdec::cpu
