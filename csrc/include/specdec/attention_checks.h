// Checks of tree_attention's arguments (DESIGN 3.2, 3.3) for every backend: each failure names the
// argument and what was expected.
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

// q [B, T, Hq, D]; caches [B, S, Hkv, D] contiguous; cache_lens int32 [B] (values read from `lens`, a host
// copy); tree_mask int64 [B, T, ceil(T / 64)] or none.
inline AttentionShapes check_tree_attention_args(const at::Tensor& q, const at::Tensor& k_cache,
                                                 const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                                 const std::optional<at::Tensor>& tree_mask, const int32_t* lens) {
  SPECDEC_CHECK_DIM(q, 4);
  SPECDEC_CHECK_DIM(k_cache, 4);
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(),
              ", got ", v_cache.sizes());
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), "q must be floating point, got ", q.scalar_type());
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type() && at::isFloatingType(k_cache.scalar_type()),
              "k_cache and v_cache must share a floating dtype, got ", k_cache.scalar_type(), " and ",
              v_cache.scalar_type());
  SPECDEC_CHECK_CONTIGUOUS(k_cache);
  SPECDEC_CHECK_CONTIGUOUS(v_cache);
  SPECDEC_CHECK_DTYPE(cache_lens, at::kInt);
  SPECDEC_CHECK_DIM(cache_lens, 1);
  SPECDEC_CHECK_SAME_DEVICE(q, k_cache);
  SPECDEC_CHECK_SAME_DEVICE(q, v_cache);
  SPECDEC_CHECK_SAME_DEVICE(q, cache_lens);
  AttentionShapes s{q.size(0), q.size(1), q.size(2), k_cache.size(2), q.size(3), k_cache.size(1), 0, 0, 0};
  SPECDEC_CHECK_SIZE(k_cache, 0, s.B);
  SPECDEC_CHECK_SIZE(k_cache, 3, s.D);
  SPECDEC_CHECK_SIZE(cache_lens, 0, s.B);
  TORCH_CHECK(s.Hkv >= 1 && s.Hq % s.Hkv == 0, "query heads (", s.Hq, ") must be a multiple of KV heads (", s.Hkv,
              ")");
  TORCH_CHECK(s.T >= 1 && s.T <= kMaxTreeNodes, "T must be in [1, ", kMaxTreeNodes, "], got ", s.T);
  for (int64_t b = 0; b < s.B; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] + s.T <= s.S, "cache overflow in row ", b, ": cache_lens ", lens[b], " + T ",
                s.T, " > S_max ", s.S);
    s.longest = std::max<int64_t>(s.longest, lens[b] + s.T);
  }
  if (tree_mask.has_value()) {
    SPECDEC_CHECK_DTYPE((*tree_mask), at::kLong);
    const std::vector<int64_t> shape{s.B, s.T, (s.T + 63) / 64};
    TORCH_CHECK(tree_mask->sizes() == shape, "tree_mask must have shape ", shape, ", got ", tree_mask->sizes());
    SPECDEC_CHECK_SAME_DEVICE(q, (*tree_mask));
  }
  s.group = s.Hq / s.Hkv;
  s.rows = s.T * s.group;
  return s;
}

}  // namespace specdec
