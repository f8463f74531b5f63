// CPU kv_compact (docs/design.md 3.3): after verification, move the accepted nodes' K/V entries (root first, in
// order) to [cache_len, cache_len + accept_len) and advance cache_lens, after kv_checks.h has validated
// everything (a bad call leaves the cache untouched).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>

#include "specdec/kv_checks.h"

namespace specdec::cpu {
namespace {

void kv_compact_cpu(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& cache_lens, const at::Tensor& accept_idx,
                    const at::Tensor& accept_len) {
  check_kv_compact_args(k_cache, v_cache, cache_lens, accept_idx, accept_len);
  const bool stacked = k_cache.dim() == 5;
  const int64_t L = stacked ? k_cache.size(0) : 1, B = k_cache.size(stacked), S = k_cache.size(stacked + 1);
  const int64_t T = accept_idx.size(1);
  const at::Tensor lens_c = cache_lens.contiguous(), idx_c = accept_idx.contiguous(), n_acc_c = accept_len.contiguous();
  const int32_t* lens = lens_c.data_ptr<int32_t>();
  const int64_t *idx = idx_c.data_ptr<int64_t>(), *n_acc = n_acc_c.data_ptr<int64_t>();
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
