// Checks of draft-tree arguments (docs/design.md 3.2) shared by the tree ops of every backend (CPU, CUDA, and
// Triton through _C.checks).
#pragma once
#include <torch/types.h>

#include <optional>

#include "specdec/checks.h"

namespace specdec {

constexpr int64_t kMaxTreeNodes = 256;

// tokens int64 [B, T]; parents int32/int64 [B, T] in topological order: parents[b, 0] = -1, then
// 0 <= p < i, or -2 for padding nodes after the real ones. Returns parents as int64 on the CPU.
inline at::Tensor check_tree(const at::Tensor& tokens, const at::Tensor& parents) {
  SPECDEC_CHECK_DIM(tokens, 2);
  SPECDEC_CHECK_DTYPE(tokens, at::kLong);
  SPECDEC_CHECK_DIM(parents, 2);
  TORCH_CHECK_VALUE(parents.scalar_type() == at::kInt || parents.scalar_type() == at::kLong,
                    "parents must be int32 or int64, got ", parents.scalar_type());
  TORCH_CHECK_VALUE(tokens.sizes() == parents.sizes(), "tokens and parents must have one shape, got ",
                    tokens.sizes(), " and ", parents.sizes());
  SPECDEC_CHECK_SAME_DEVICE(tokens, parents);
  const int64_t B = tokens.size(0), T = tokens.size(1);
  TORCH_CHECK_VALUE(T >= 1 && T <= kMaxTreeNodes, "tokens and parents: a tree has 1 to ", kMaxTreeNodes,
                    " nodes, got T = ", T);
  const at::Tensor p = parents.to(at::kCPU, at::kLong).contiguous();
  const int64_t* pp = p.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = pp + b * T;
    TORCH_CHECK_VALUE(row[0] == -1, "parents[", b, ", 0] must be -1 (node 0 is the root), got ", row[0]);
    bool padding = false;
    for (int64_t i = 1; i < T; ++i) {
      if (row[i] == -2) {
        padding = true;
        continue;
      }
      TORCH_CHECK_VALUE(!padding, "parents[", b, "]: padding nodes (-2) must come after all real nodes, node ", i);
      TORCH_CHECK_VALUE(row[i] >= 0 && row[i] < i, "parents[", b, ", ", i, "] = ", row[i],
                        " must be in [0, ", i, ") (topological order, no cycles) or -2 (padding)");
    }
  }
  return p;
}

// logits [B, T, V] of a floating type on the device of the tree.
inline void check_tree_logits(const at::Tensor& logits, const at::Tensor& tokens) {
  SPECDEC_CHECK_DIM(logits, 3);
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), "logits must be floating point, got ",
                    logits.scalar_type());
  SPECDEC_CHECK_SIZE(logits, 0, tokens.size(0));
  SPECDEC_CHECK_SIZE(logits, 1, tokens.size(1));
  TORCH_CHECK_VALUE(logits.size(2) >= 1, "logits must have a vocabulary dimension V >= 1");
  SPECDEC_CHECK_SAME_DEVICE(logits, tokens);
}

// Every token in [0, V): sampling reads p[token]. One host copy of (min, max) when tokens are on a device.
inline void check_token_range(const at::Tensor& tokens, int64_t V) {
  if (tokens.numel() == 0) return;
  const at::Tensor range = at::stack({tokens.min(), tokens.max()}).to(at::kCPU);
  const int64_t* r = range.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(r[0] >= 0 && r[1] < V, "tokens must be in [0, V = ", V, ")");
}

// tree_verify_sample's own arguments, after check_tree and check_tree_logits: uniforms float32 [B, T + 1],
// draft_probs [B, T, V] or none, the sampling parameters, and tokens inside the vocabulary.
inline void check_tree_sample_args(const at::Tensor& tokens, const at::Tensor& logits, const at::Tensor& uniforms,
                                   double temperature, double top_p, int64_t top_k,
                                   const std::optional<at::Tensor>& draft_probs) {
  const int64_t B = tokens.size(0), T = tokens.size(1);
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be > 0 (use tree_verify_greedy for 0), got ", temperature);
  TORCH_CHECK_VALUE(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
  TORCH_CHECK_VALUE(top_k >= 0, "top_k must be >= 0, got ", top_k);
  SPECDEC_CHECK_DTYPE(uniforms, at::kFloat);
  TORCH_CHECK_VALUE(uniforms.dim() == 2 && uniforms.size(0) == B && uniforms.size(1) == T + 1,
                    "uniforms must be float32 [B, T + 1] = [", B, ", ", T + 1, "], got ", uniforms.sizes());
  SPECDEC_CHECK_SAME_DEVICE(uniforms, tokens);
  if (draft_probs.has_value()) {
    TORCH_CHECK_VALUE(draft_probs->sizes() == logits.sizes(), "draft_probs must have the shape of logits ",
                      logits.sizes(), ", got ", draft_probs->sizes());
    SPECDEC_CHECK_SAME_DEVICE((*draft_probs), tokens);
  }
  check_token_range(tokens, logits.size(2));
}

}  // namespace specdec
