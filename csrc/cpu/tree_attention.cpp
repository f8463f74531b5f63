// CPU tree_attention (DESIGN 3.2, 3.3): T new tokens attend to the cache and, among themselves, to what
// the bit-packed tree mask allows. Split over (batch row, KV head, chunk of 64 positions) tasks, each a
// partial softmax for all query rows of its KV head (GQA: K/V read once per group), then merged per
// row in chunk order. Chunk bounds are absolute positions, so the result for a token does not depend on
// how many tokens are verified with it (T at once == one at a time, bitwise).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "specdec/checks.h"
#include "specdec/cpu_isa.h"
#include "specdec/tree_checks.h"
#include "tree_attention_isa.h"

namespace specdec::cpu {
namespace {

struct Shapes {
  int64_t B, T, Hq, Hkv, D, S, group, rows, chunks;
};

Shapes check_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                    const at::Tensor& cache_lens, const std::optional<at::Tensor>& tree_mask) {
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
  Shapes s{q.size(0), q.size(1), q.size(2), k_cache.size(2), q.size(3), k_cache.size(1), 0, 0, 0};
  SPECDEC_CHECK_SIZE(k_cache, 0, s.B);
  SPECDEC_CHECK_SIZE(k_cache, 3, s.D);
  SPECDEC_CHECK_SIZE(cache_lens, 0, s.B);
  TORCH_CHECK(s.Hkv >= 1 && s.Hq % s.Hkv == 0, "query heads (", s.Hq, ") must be a multiple of KV heads (", s.Hkv,
              ")");
  TORCH_CHECK(s.D % 16 == 0 && s.D <= 256, "head dim must be a multiple of 16 up to 256, got ", s.D);
  TORCH_CHECK(s.T >= 1 && s.T <= kMaxTreeNodes, "T must be in [1, ", kMaxTreeNodes, "], got ", s.T);
  const int32_t* lens = cache_lens.data_ptr<int32_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < s.B; ++b) {
    TORCH_CHECK(lens[b] >= 0 && lens[b] + s.T <= s.S, "cache overflow in row ", b, ": cache_lens ", lens[b],
                " + T ", s.T, " > S_max ", s.S);
    longest = std::max<int64_t>(longest, lens[b] + s.T);
  }
  if (tree_mask.has_value()) {
    SPECDEC_CHECK_DTYPE((*tree_mask), at::kLong);
    const std::vector<int64_t> shape{s.B, s.T, (s.T + 63) / 64};
    TORCH_CHECK(tree_mask->sizes() == shape, "tree_mask must have shape ", shape, ", got ", tree_mask->sizes());
    SPECDEC_CHECK_SAME_DEVICE(q, (*tree_mask));
  }
  s.group = s.Hq / s.Hkv;
  s.rows = s.T * s.group;
  s.chunks = (longest + kAttentionChunk - 1) / kAttentionChunk;
  return s;
}

// Bit p = bit start + p of a row's mask words (bit j = new token j), for p in [0, 64); zero outside [0, T).
uint64_t mask_bits(const int64_t* words, int64_t T, int64_t start) {
  uint64_t bits = 0;
  for (int64_t j = std::max<int64_t>(start, 0); j < std::min(start + 64, T); ++j)
    bits |= ((static_cast<uint64_t>(words[j / 64]) >> (j % 64)) & 1ull) << (j - start);
  return bits;
}

using ChunkKernel = void (*)(const float*, int, int, const float*, const float*, const unsigned long long*, float*);

ChunkKernel chunk_kernel() {
  switch (chosen_isa()) {
    case Isa::kAvx512: return avx512::chunk_attention;
    case Isa::kAvx2: return avx2::chunk_attention;
    default: return generic::chunk_attention;
  }
}

// One task: rows of KV head h of batch row b over chunk c -> partial [rows][D + 2].
template <class cache_t>
void attend_chunk(const Shapes& s, const float* queries, const cache_t* k, const cache_t* v, int64_t cache_len,
                  const int64_t* mask, int64_t b, int64_t h, int64_t c, ChunkKernel kernel, float* partial) {
  const int64_t C = kAttentionChunk, D = s.D, first = c * C, end = cache_len + s.T;
  // Per-thread scratch, reused across tasks and calls (a task is ~10 us: allocations would show).
  thread_local std::vector<float> kt, vb;
  thread_local std::vector<unsigned long long> visible;
  kt.resize(D * C);
  vb.resize(C * D);
  visible.resize(s.rows);
  if (end - first < C) {  // positions past the end: zero K/V (their scores are masked anyway)
    std::fill(kt.begin(), kt.end(), 0.f);
    std::fill(vb.begin(), vb.end(), 0.f);
  }
  for (int64_t p = 0; p < C && first + p < end; ++p) {
    const int64_t offset = ((b * s.S + first + p) * s.Hkv + h) * D;
    for (int64_t d = 0; d < D; ++d) {
      kt[d * C + p] = static_cast<float>(k[offset + d]);
      vb[p * D + d] = static_cast<float>(v[offset + d]);
    }
  }
  const uint64_t cached = first >= cache_len ? 0 : cache_len - first >= C ? ~0ull : (1ull << (cache_len - first)) - 1;
  for (int64_t i = 0; i < s.T; ++i) {
    // new token j sits at position cache_len + j, i.e. bit cache_len + j - first of this chunk
    const int64_t j0 = first - cache_len;
    uint64_t own;
    if (mask != nullptr) {
      own = mask_bits(mask + (b * s.T + i) * ((s.T + 63) / 64), s.T, j0);
    } else {  // causal: new tokens j <= i
      own = 0;
      for (int64_t j = std::max<int64_t>(j0, 0); j <= i && j < j0 + C; ++j) own |= 1ull << (j - j0);
    }
    for (int64_t g = 0; g < s.group; ++g) visible[i * s.group + g] = cached | own;
  }
  kernel(queries + (b * s.Hkv + h) * s.rows * D, s.rows, D, kt.data(), vb.data(), visible.data(), partial);
}

at::Tensor tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& cache_lens, const std::optional<at::Tensor>& tree_mask, double scale) {
  const Shapes s = check_inputs(q, k_cache, v_cache, cache_lens, tree_mask);
  // queries grouped by KV head: [B, Hkv, T * group, D], pre-scaled float32
  const at::Tensor queries =
      (q.to(at::kFloat) * scale).view({s.B, s.T, s.Hkv, s.group, s.D}).permute({0, 2, 1, 3, 4}).contiguous();
  const at::Tensor mask = tree_mask.has_value() ? tree_mask->contiguous() : at::Tensor();
  at::Tensor partials = at::empty({s.B, s.Hkv, s.chunks, s.rows, s.D + 2}, q.options().dtype(at::kFloat));
  const int32_t* lens = cache_lens.data_ptr<int32_t>();
  const ChunkKernel kernel = chunk_kernel();
  const int64_t tasks = s.B * s.Hkv * s.chunks, part = s.rows * (s.D + 2);
  float* partial_ptr = partials.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k_cache.scalar_type(), "tree_attention", [&] {
    const scalar_t *k = k_cache.data_ptr<scalar_t>(), *v = v_cache.data_ptr<scalar_t>();
    const float* qp = queries.data_ptr<float>();
    const int64_t* mp = mask.defined() ? mask.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c = task % s.chunks, h = task / s.chunks % s.Hkv, b = task / s.chunks / s.Hkv;
        if (c * kAttentionChunk < lens[b] + s.T)
          attend_chunk<scalar_t>(s, qp, k, v, lens[b], mp, b, h, c, kernel, partial_ptr + task * part);
      }
    });
  });
  // Merge the chunks of each row in order: o = sum_c exp(m_c - m) o_c / sum_c exp(m_c - m) l_c.
  at::Tensor out = at::empty({s.B, s.Hkv, s.rows, s.D}, q.options().dtype(at::kFloat));
  float* out_ptr = out.data_ptr<float>();
  at::parallel_for(0, s.B * s.Hkv * s.rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(s.D);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t r = row % s.rows, bh = row / s.rows, b = bh / s.Hkv;
      const int64_t chunks = (lens[b] + s.T + kAttentionChunk - 1) / kAttentionChunk;
      float m = -INFINITY, l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t c = 0; c < chunks; ++c) {
        const float* pc = partial_ptr + (bh * s.chunks + c) * part + r * (s.D + 2);
        const float mc = pc[s.D], lc = pc[s.D + 1];
        if (lc == 0.f) continue;  // nothing visible in this chunk
        const float m_new = std::max(m, mc), old_scale = std::exp(m - m_new), new_scale = std::exp(mc - m_new);
        for (int64_t d = 0; d < s.D; ++d) acc[d] = acc[d] * old_scale + pc[d] * new_scale;
        l = l * old_scale + lc * new_scale;
        m = m_new;
      }
      for (int64_t d = 0; d < s.D; ++d) out_ptr[row * s.D + d] = acc[d] / l;
    }
  });
  // [B, Hkv, T, group, D] -> [B, T, Hq, D]
  return out.view({s.B, s.Hkv, s.T, s.group, s.D}).permute({0, 2, 1, 3, 4}).reshape({s.B, s.T, s.Hq, s.D}).to(
      q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }

}  // namespace specdec::cpu
