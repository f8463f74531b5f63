// Checks of draft-tree arguments (DESIGN 3.2) shared by the tree ops of every backend.
#pragma once
#include <torch/types.h>

#include "specdec/checks.h"

namespace specdec {

constexpr int64_t kMaxTreeNodes = 256;

// tokens int64 [B, T]; parents int32/int64 [B, T] in topological order: parents[b, 0] = -1, then
// 0 <= p < i, or -2 for padding nodes after the real ones. Returns parents as int64 on the CPU.
inline at::Tensor check_tree(const at::Tensor& tokens, const at::Tensor& parents) {
  SPECDEC_CHECK_DIM(tokens, 2);
  SPECDEC_CHECK_DTYPE(tokens, at::kLong);
  SPECDEC_CHECK_DIM(parents, 2);
  TORCH_CHECK(parents.scalar_type() == at::kInt || parents.scalar_type() == at::kLong,
              "parents must be int32 or int64, got ", parents.scalar_type());
  TORCH_CHECK(tokens.sizes() == parents.sizes(), "tokens and parents must have one shape, got ", tokens.sizes(),
              " and ", parents.sizes());
  SPECDEC_CHECK_SAME_DEVICE(tokens, parents);
  const int64_t B = tokens.size(0), T = tokens.size(1);
  TORCH_CHECK(T >= 1 && T <= kMaxTreeNodes, "a tree has 1 to ", kMaxTreeNodes, " nodes, got T = ", T);
  const at::Tensor p = parents.to(at::kCPU, at::kLong).contiguous();
  const int64_t* pp = p.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* row = pp + b * T;
    TORCH_CHECK(row[0] == -1, "parents[", b, ", 0] must be -1 (node 0 is the root), got ", row[0]);
    bool padding = false;
    for (int64_t i = 1; i < T; ++i) {
      if (row[i] == -2) {
        padding = true;
        continue;
      }
      TORCH_CHECK(!padding, "parents[", b, "]: padding nodes (-2) must come after all real nodes, node ", i);
      TORCH_CHECK(row[i] >= 0 && row[i] < i, "parents[", b, ", ", i, "] = ", row[i],
                  " must be in [0, ", i, ") (topological order, no cycles) or -2 (padding)");
    }
  }
  return p;
}

// logits [B, T, V] of a floating type on the device of the tree.
inline void check_tree_logits(const at::Tensor& logits, const at::Tensor& tokens) {
  SPECDEC_CHECK_DIM(logits, 3);
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "logits must be floating point, got ", logits.scalar_type());
  SPECDEC_CHECK_SIZE(logits, 0, tokens.size(0));
  SPECDEC_CHECK_SIZE(logits, 1, tokens.size(1));
  TORCH_CHECK(logits.size(2) >= 1, "logits must have a vocabulary dimension V >= 1");
  SPECDEC_CHECK_SAME_DEVICE(logits, tokens);
}

}  // namespace specdec
