// Checks of tree_attention's arguments (docs/design.md 3.2, 3.3) for every backend (CPU, CUDA, and Triton through
// _C.checks): each failure names the argument and what was expected.
#pragma once
#include <torch/types.h>

#include <algorithm>
#include <vector>

#include "specdec/checks.h"
#include "specdec/tree_checks.h"

namespace specdec {

struct AttentionShapes {
  int64_t B, T, Hq, Hkv, D, S, group, rows, longest;  // rows = T * group per KV head; longest = max cache_len + T
};

// q [B, T, Hq, D] float32/bfloat16/float16; caches [B, S, Hkv, D] of q's dtype, contiguous in the head dim
// (a backend may need more: CUDA whole caches); cache_lens int32 [B], read on the host (one copy from a
// device; host_lens, if given, receives that copy); tree_mask int64 [B, T, ceil(T / 64)] or none. Head-dim
// limits are the backends' own.
inline AttentionShapes check_tree_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                                 const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                 const std::optional<at::Tensor>& tree_mask_opt,
                                                 at::Tensor* host_lens = nullptr) {
  SPECDEC_CHECK_DIM(q, 4);
  SPECDEC_CHECK_DIM(k_cache, 4);
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(),
                    ", got ", v_cache.sizes());
  const auto dtype = q.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                    "q must be float32, bfloat16 or float16, got ", dtype);
  SPECDEC_CHECK_DTYPE(k_cache, dtype);
  SPECDEC_CHECK_DTYPE(v_cache, dtype);
  TORCH_CHECK_VALUE(k_cache.stride(3) == 1 && v_cache.stride(3) == 1,
                    "k_cache and v_cache must be contiguous in the head dim, got strides ", k_cache.strides(),
                    " and ", v_cache.strides());
  SPECDEC_CHECK_DTYPE(cache_lens, at::kInt);
  SPECDEC_CHECK_DIM(cache_lens, 1);
  SPECDEC_CHECK_SAME_DEVICE(q, k_cache);
  SPECDEC_CHECK_SAME_DEVICE(q, v_cache);
  SPECDEC_CHECK_SAME_DEVICE(q, cache_lens);
  AttentionShapes s{q.size(0), q.size(1), q.size(2), k_cache.size(2), q.size(3), k_cache.size(1), 0, 0, 0};
  SPECDEC_CHECK_SIZE(k_cache, 0, s.B);
  SPECDEC_CHECK_SIZE(k_cache, 3, s.D);
  SPECDEC_CHECK_SIZE(cache_lens, 0, s.B);
  TORCH_CHECK_VALUE(s.Hkv >= 1 && s.Hq % s.Hkv == 0, "q's heads (Hq = ", s.Hq,
                    ") must be a multiple of KV heads (k_cache's Hkv = ", s.Hkv, ")");
  TORCH_CHECK_VALUE(s.T >= 1 && s.T <= kMaxTreeNodes, "q's T must be in [1, ", kMaxTreeNodes, "] new tokens, got ",
                    s.T);
  const at::Tensor lens = cache_lens.to(at::kCPU).contiguous();
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t len = lens.data_ptr<int32_t>()[b];
    TORCH_CHECK_VALUE(len >= 0 && len + s.T <= s.S, "cache overflow in row ", b, ": cache_lens ", len, " + T ", s.T,
                      " > S_max ", s.S);
    s.longest = std::max(s.longest, len + s.T);
  }
  if (host_lens != nullptr) *host_lens = lens;
  if (tree_mask_opt.has_value()) {
    const at::Tensor& tree_mask = *tree_mask_opt;
    TORCH_CHECK_VALUE(tree_mask.scalar_type() == at::kLong, "tree_mask must be Long (int64), got ",
                      tree_mask.scalar_type());
    const std::vector<int64_t> shape{s.B, s.T, (s.T + 63) / 64};
    TORCH_CHECK_VALUE(tree_mask.sizes() == shape, "tree_mask must have shape ", shape, ", got ", tree_mask.sizes());
    SPECDEC_CHECK_SAME_DEVICE(q, tree_mask);
  }
  s.group = s.Hq / s.Hkv;
  s.rows = s.T * s.group;
  return s;
}

}  // namespace specdec
