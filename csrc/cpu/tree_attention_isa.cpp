// The tree-attention chunk kernel compiled for three ISAs.
#include "tree_attention_isa.h"

#define SPECDEC_ISA_KERNEL "cpu/tree_attention_kernel.inc"  // relative to csrc/
#include "specdec/isa_regions.inc"
