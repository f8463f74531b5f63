// CPU kv_compact (DESIGN 3.3): after verification, move the accepted nodes' K/V entries (root first, in
// order) to [cache_len, cache_len + accept_len) and advance cache_lens. Everything is validated before the
// first byte moves, so a bad call leaves the cache untouched.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>

#include "specdec/checks.h"

namespace specdec::cpu {
namespace {

void kv_compact_cpu(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& cache_lens, const at::Tensor& accept_idx,
                    const at::Tensor& accept_len) {
  TORCH_CHECK(k_cache.dim() == 4 || k_cache.dim() == 5,
              "k_cache must be [B, S, H, D] or stacked [L, B, S, H, D], got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache must have the shape of k_cache ", k_cache.sizes(),
              ", got ", v_cache.sizes());
  TORCH_CHECK(v_cache.scalar_type() == k_cache.scalar_type(), "k_cache and v_cache must share a dtype");
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
  const bool stacked = k_cache.dim() == 5;
  const int64_t L = stacked ? k_cache.size(0) : 1, B = k_cache.size(stacked), S = k_cache.size(stacked + 1);
  const int64_t T = accept_idx.size(1);
  SPECDEC_CHECK_SIZE(cache_lens, 0, B);
  SPECDEC_CHECK_SIZE(accept_idx, 0, B);
  SPECDEC_CHECK_SIZE(accept_len, 0, B);
  const int32_t* lens = cache_lens.data_ptr<int32_t>();
  const int64_t *idx = accept_idx.contiguous().data_ptr<int64_t>(), *n_acc = accept_len.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(n_acc[b] >= 1 && n_acc[b] <= T, "accept_len[", b, "] = ", n_acc[b], " must be in [1, ", T, "]");
    TORCH_CHECK(idx[b * T] == 0, "accept_idx[", b, ", 0] must be 0 (the root comes first), got ", idx[b * T]);
    for (int64_t i = 1; i < n_acc[b]; ++i)
      TORCH_CHECK(idx[b * T + i] > idx[b * T + i - 1], "accept_idx[", b, "] must increase along the path, got ",
                  idx[b * T + i - 1], " then ", idx[b * T + i]);
    const int64_t last = lens[b] + idx[b * T + n_acc[b] - 1];
    TORCH_CHECK(lens[b] >= 0 && last < S, "cache overflow in row ", b, ": cache_lens ", lens[b], " + accept_idx ",
                idx[b * T + n_acc[b] - 1], " >= S_max ", S);
  }
  const int64_t entry_bytes = k_cache.stride(stacked + 1) * k_cache.element_size();  // one position: H * D
  const int64_t row_bytes = S * entry_bytes, layer_bytes = B * row_bytes;
  for (at::Tensor* cache : {&k_cache, &v_cache}) {
    char* base = static_cast<char*>(cache->data_ptr());
    for (int64_t l = 0; l < L; ++l)
      for (int64_t b = 0; b < B; ++b) {
        char* row = base + l * layer_bytes + b * row_bytes + lens[b] * entry_bytes;
        // Sources never precede destinations (idx[i] >= i), so an in-order copy never reads a moved entry.
        for (int64_t i = 1; i < n_acc[b]; ++i)
          if (idx[b * T + i] != i) std::memcpy(row + i * entry_bytes, row + idx[b * T + i] * entry_bytes, entry_bytes);
      }
  }
  cache_lens.add_(accept_len.to(at::kInt));
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("kv_compact", &kv_compact_cpu); }

}  // namespace specdec::cpu
