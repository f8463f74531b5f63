// The one place where the specdec op schemas live. Backends register kernels for them in their
// own files with TORCH_LIBRARY_IMPL(specdec, <Key>, m); Python fake kernels live in ops.py.
#include <torch/library.h>

TORCH_LIBRARY(specdec, m) {
  // W4A16 GEMM (DESIGN 3.1). prepack turns the canonical (qweight, scales, mins) into the
  // layout of the backend of qweight's device; gemm consumes only that layout.
  m.def("w4a16_prepack(Tensor qweight, Tensor scales, Tensor mins, int group_size) -> Tensor[]");
  m.def(
      "w4a16_gemm(Tensor x, Tensor packed_qweight, Tensor packed_scales, Tensor packed_mins, "
      "int group_size, int out_features) -> Tensor");

  // Attention of T new tokens over a static KV cache, under a bit-packed tree mask
  // (None = causal among the new tokens). DESIGN 3.2, 3.3.
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, "
      "Tensor? tree_mask, float scale) -> Tensor");

  // Fused tree verification (DESIGN 4.3) -> (accept_idx [B, T], accept_len [B], bonus [B]).
  m.def("tree_verify_greedy(Tensor tokens, Tensor parents, Tensor logits) -> (Tensor, Tensor, Tensor)");
  m.def(
      "tree_verify_sample(Tensor tokens, Tensor parents, Tensor logits, Tensor uniforms, "
      "float temperature, float top_p, int top_k, Tensor? draft_probs) -> (Tensor, Tensor, Tensor)");

  // In place: move the accepted entries to [cache_lens, cache_lens + accept_len), advance cache_lens.
  m.def(
      "kv_compact(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) cache_lens, Tensor accept_idx, "
      "Tensor accept_len) -> ()");
}

// The Python module _C: importing it registers the ops above; it also reports the CPU path.
#include <torch/extension.h>

#include "specdec/cpu_isa.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", [] { return std::string(specdec::cpu::isa_name(specdec::cpu::chosen_matrix_isa())); },
        "The CPU instruction set the kernels use now (SPECDEC_CPU_ISA overrides the detected one).");
}
