// Vectorised row passes of the small Llama-layer ops (layer_ops.cpp), compiled per ISA by
// layer_rows_isa.cpp. Raw float32 pointers, no torch types.
#pragma once

namespace specdec::cpu {

struct LayerRows {
  // y = s * weight / sqrt(mean(s^2) + eps) over n floats, s = x + residual (written to sum) when residual is
  // given, else s = x (sum unused).
  void (*rms_norm)(const float* x, const float* residual, float* sum, const float* weight, float* y, long n,
                   float eps);
  // y = silu(gate) * up over n floats.
  void (*silu_mul)(const float* gate, const float* up, float* y, long n);
};

LayerRows layer_rows();  // for the ISA chosen now (SPECDEC_CPU_ISA or the best the CPU has)

}  // namespace specdec::cpu
