// A model's decoder layers as one eager C++ call (see decoder_stack.cpp); bound as _C.DecoderStack.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

// Hidden, as pybind11's own types are: these never leave the extension (otherwise GCC warns on every binding).
#pragma GCC visibility push(hidden)
namespace specdec {

// A prepacked W4A16 / W8A16 layer without bias: y = gemm(x, qweight, scales, mins, group_size, out_features,
// x_digits).
struct PackedLinear {
  at::Tensor qweight, scales, mins;
  int64_t group_size, out_features, x_digits, weight_bits;
  at::Tensor operator()(const at::Tensor& x) const;
};

struct DecoderLayer {
  at::Tensor attn_norm, ffn_norm;
  PackedLinear wqkv, wo, w_gate_up, w_down;
};

class DecoderStack {
 public:
  DecoderStack(std::vector<DecoderLayer> layers, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, double eps);
  // x [B * T, dim] (the embeddings) -> (x, pending) after the last layer, as the Python blocks return them, and
  // the residual stream entering each layer in `capture` (ascending ids; EAGLE-3 drafts from them);
  // positions int64 [B, T]; caches [layers, B, S, Hkv, D], written at [cache_lens, cache_lens + T).
  std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> forward(
      at::Tensor x, const at::Tensor& positions, const at::Tensor& rope_cos, const at::Tensor& rope_sin,
      const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& cache_lens,
      const std::optional<at::Tensor>& tree_mask, const std::vector<int64_t>& capture) const;

 private:
  std::vector<DecoderLayer> layers_;
  int64_t n_heads_, n_kv_heads_, head_dim_;
  double eps_;
};

}  // namespace specdec
#pragma GCC visibility pop
