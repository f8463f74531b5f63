// Checks of kv_compact's arguments (docs/design.md 3.3) for every backend (CPU, CUDA, and Triton through
// _C.checks). Everything is validated before the first byte moves, so a bad call leaves the cache untouched.
#pragma once
#include <torch/types.h>

#include "specdec/checks.h"

namespace specdec {

// The values, on host copies (lens [B], idx [B, T] contiguous, n_acc [B]): a path starts at the root,
// increases, and fits in S positions after cache_lens.
template <class Len>
inline void check_accepted_paths(const Len* lens, const int64_t* idx, const int64_t* n_acc, int64_t B, int64_t T,
                                 int64_t S) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(n_acc[b] >= 1 && n_acc[b] <= T, "accept_len[", b, "] = ", n_acc[b], " must be in [1, ", T,
                      "]");
    TORCH_CHECK_VALUE(idx[b * T] == 0, "accept_idx[", b, ", 0] must be 0 (the root comes first), got ", idx[b * T]);
    for (int64_t i = 1; i < n_acc[b]; ++i)
      TORCH_CHECK_VALUE(idx[b * T + i] > idx[b * T + i - 1], "accept_idx[", b, "] must increase along the path, got ",
                        idx[b * T + i - 1], " then ", idx[b * T + i]);
    const int64_t len = lens[b], last = len + idx[b * T + n_acc[b] - 1];
    TORCH_CHECK_VALUE(len >= 0 && last < S, "cache overflow in row ", b, ": cache_lens ", len, " + accept_idx ",
                      idx[b * T + n_acc[b] - 1], " >= S_max ", S);
  }
}

// Caches [B, S, H, D] or stacked [L, B, S, H, D], contiguous; cache_lens int32 [B]; accept_idx int64 [B, T];
// accept_len int64 [B]. Shapes, dtypes and devices, then the values (from a device: one copy to the host).
inline void check_kv_compact_args(const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& cache_lens,
                                  const at::Tensor& accept_idx, const at::Tensor& accept_len) {
  TORCH_CHECK_VALUE(k_cache.dim() == 4 || k_cache.dim() == 5,
                    "k_cache must be [B, S, H, D] or stacked [L, B, S, H, D], got ", k_cache.sizes());
  TORCH_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(),
                    ", got ", v_cache.sizes());
  TORCH_CHECK_VALUE(v_cache.scalar_type() == k_cache.scalar_type(), "k_cache and v_cache must share a dtype, got ",
                    k_cache.scalar_type(), " and ", v_cache.scalar_type());
  SPECDEC_CHECK_CONTIGUOUS(k_cache);
  SPECDEC_CHECK_CONTIGUOUS(v_cache);
  SPECDEC_CHECK_DTYPE(cache_lens, at::kInt);
  SPECDEC_CHECK_DIM(cache_lens, 1);
  SPECDEC_CHECK_DIM(accept_idx, 2);
  SPECDEC_CHECK_DTYPE(accept_idx, at::kLong);
  SPECDEC_CHECK_DIM(accept_len, 1);
  SPECDEC_CHECK_DTYPE(accept_len, at::kLong);
  SPECDEC_CHECK_SAME_DEVICE(k_cache, v_cache);
  SPECDEC_CHECK_SAME_DEVICE(k_cache, cache_lens);
  SPECDEC_CHECK_SAME_DEVICE(k_cache, accept_idx);
  SPECDEC_CHECK_SAME_DEVICE(k_cache, accept_len);
  const int64_t B = k_cache.size(k_cache.dim() - 4), S = k_cache.size(k_cache.dim() - 3), T = accept_idx.size(1);
  SPECDEC_CHECK_SIZE(cache_lens, 0, B);
  SPECDEC_CHECK_SIZE(accept_idx, 0, B);
  SPECDEC_CHECK_SIZE(accept_len, 0, B);
  if (B == 0) return;
  if (k_cache.is_cpu()) {
    const at::Tensor lens = cache_lens.contiguous(), idx = accept_idx.contiguous(), n_acc = accept_len.contiguous();
    check_accepted_paths(lens.data_ptr<int32_t>(), idx.data_ptr<int64_t>(), n_acc.data_ptr<int64_t>(), B, T, S);
  } else {
    const at::Tensor host =
        at::cat({cache_lens.to(at::kLong), accept_len, accept_idx.flatten()}).to(at::kCPU);  // lens, n_acc, idx
    const int64_t* h = host.data_ptr<int64_t>();
    check_accepted_paths(h, h + 2 * B, h + B, B, T, S);
  }
}

}  // namespace specdec
