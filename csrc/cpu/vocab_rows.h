// Vectorised passes over a vocabulary row (float32, length padded to a multiple of 16), per ISA.
#pragma once

namespace specdec::cpu {

constexpr long kRowPadding = 16;  // rows are padded (with -inf) to a multiple of this many floats

struct VocabRows {
  float (*max)(const float* row, long padded);
  float (*sum)(const float* row, long padded);
  float (*exp)(float* row, long padded, float shift);  // row <- exp(row - shift), returns the sum
};

VocabRows vocab_rows();  // for the ISA chosen now (SPECDEC_CPU_ISA or the best the CPU has)

}  // namespace specdec::cpu
