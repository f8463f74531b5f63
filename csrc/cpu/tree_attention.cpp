// CPU tree_attention (docs/design.md 3.2, 3.3): T new tokens attend to the cache and, among themselves, to what
// the bit-packed tree mask allows. Tasks = (batch row, KV head, split of 128 absolute positions); a task
// computes the partial softmax of ALL query rows of its KV head (GQA: K/V read once per group) with the
// kernel of tree_attention_kernel.inc; the partials of a (batch row, KV head) are then folded in position
// order. Split bounds are absolute positions and rows never mix, so a token's result does not depend on
// how many tokens are verified with it (T at once == one at a time, bitwise). A tree node's keys are grouped
// by the positions they take in its own chain (cache_len + depth), so on the vector paths a node's result
// is, bit for bit, that of decoding its root-to-node chain one token at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "specdec/attention_checks.h"
#include "specdec/cpu_isa.h"
#include "specdec/huge_buffer.h"
#include "tree_attention_isa.h"

namespace specdec::cpu {
namespace {

static_assert(kChunkRowsMax >= kAttentionChunk - 1 + kMaxTreeNodes, "a chunk holds its cache rows and every new token");

struct Shapes {
  int64_t B, T, Hq, Hkv, D, S, group, rows, row_vectors;
  int64_t ldq() const { return row_vectors * 16; }
  int64_t partial_floats() const { return (D + 2) * ldq(); }  // o [D][ldq], m, l
};

// The shared checks (attention_checks.h), then the CPU kernels' own head-dim limit.
Shapes check_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                    const at::Tensor& cache_lens, const std::optional<at::Tensor>& tree_mask) {
  const AttentionShapes a = check_tree_attention_args(q, k_cache, v_cache, cache_lens, tree_mask);
  TORCH_CHECK_VALUE(a.D >= 16 && a.D % 16 == 0 && a.D <= 256, "q's head dim must be a multiple of 16 up to 256, got ",
                    a.D);
  return Shapes{a.B, a.T, a.Hq, a.Hkv, a.D, a.S, a.group, a.rows, (a.rows + 15) / 16};
}

// qt [B, Hkv, D, ldq]: qt[b, h, d, t * group + g] = scale * q[b, t, h * group + g, d]; padding rows 0.
// On the calling thread: it is B T Hq D elements, small next to the attention itself. Writes in order
// (the rows read, one per query row, stay in L1 across 16 dims).
void pack_queries(const at::Tensor& q, double scale, const Shapes& s, float* qt) {
  const at::Tensor qf = q.to(at::kFloat);
  const float factor = static_cast<float>(scale);
  const int64_t ldq = s.ldq(), dim_stride = qf.stride(3);
  std::vector<const float*> row(s.rows);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hkv; ++h) {
      for (int64_t r = 0; r < s.rows; ++r)
        row[r] = qf.data_ptr<float>() + b * qf.stride(0) + r / s.group * qf.stride(1) +
                 (h * s.group + r % s.group) * qf.stride(2);
      for (int64_t d = 0; d < s.D; ++d) {
        float* out = qt + ((b * s.Hkv + h) * s.D + d) * ldq;
        for (int64_t r = 0; r < s.rows; ++r) out[r] = factor * row[r][d * dim_stride];
        std::fill(out + s.rows, out + ldq, 0.f);
      }
    }
}

// [B, T, row_vectors] lane masks: bit (r % 16) of entry (b, j, r / 16) is set iff row r (token r / group)
// sees new token j: its tree-mask bit j, or j <= token when the mask is None (causal).
std::vector<uint16_t> new_token_visibility(const std::optional<at::Tensor>& tree_mask, const Shapes& s) {
  std::vector<uint16_t> visible(s.B * s.T * s.row_vectors, 0);
  const at::Tensor mask = tree_mask.has_value() ? tree_mask->contiguous() : at::Tensor();
  const int64_t words = (s.T + 63) / 64;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t) {
      const int64_t* row = mask.defined() ? mask.data_ptr<int64_t>() + (b * s.T + t) * words : nullptr;
      for (int64_t j = 0; j < s.T; ++j) {
        const bool sees = row != nullptr ? (static_cast<uint64_t>(row[j / 64]) >> (j % 64)) & 1 : j <= t;
        if (!sees) continue;
        for (int64_t r = t * s.group; r < (t + 1) * s.group; ++r)
          visible[(b * s.T + j) * s.row_vectors + r / 16] |= static_cast<uint16_t>(1u << (r % 16));
      }
    }
  return visible;
}

// [B, T] tree depths: the new tokens a token sees, itself included, less one (its chain's length before it);
// causal: j. Clamped to [0, T): any mask stays a valid assignment of each token to one position.
std::vector<int> new_token_depths(const std::optional<at::Tensor>& tree_mask, const Shapes& s) {
  std::vector<int> depth(s.B * s.T);
  if (!tree_mask.has_value()) {
    for (int64_t i = 0; i < s.B * s.T; ++i) depth[i] = static_cast<int>(i % s.T);
    return depth;
  }
  const at::Tensor mask = tree_mask->contiguous();
  const int64_t* bits = mask.data_ptr<int64_t>();
  const int64_t words = (s.T + 63) / 64;
  for (int64_t i = 0; i < s.B * s.T; ++i) {
    int seen = 0;
    for (int64_t w = 0; w < words; ++w) seen += __builtin_popcountll(static_cast<uint64_t>(bits[i * words + w]));
    depth[i] = static_cast<int>(std::clamp<int64_t>(seen - 1, 0, s.T - 1));
  }
  return depth;
}

// [B, T, words] bit masks for the AMX path: bit j of token t's words is set iff it sees new token j.
std::vector<uint64_t> token_visibility(const std::optional<at::Tensor>& tree_mask, const Shapes& s) {
  const int64_t words = (s.T + 63) / 64;
  if (tree_mask.has_value()) {
    const at::Tensor mask = tree_mask->contiguous();
    const auto* bits = reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>());
    return std::vector<uint64_t>(bits, bits + s.B * s.T * words);
  }
  std::vector<uint64_t> causal(s.B * s.T * words, 0);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t j = 0; j <= t; ++j) causal[(b * s.T + t) * words + j / 64] |= uint64_t{1} << (j % 64);
  return causal;
}

struct Kernels {
  void (*attend_split)(const SplitArgs&);
  void (*fold_partial)(float*, const float*, int, int);
  bool tiles;  // attend_split reads SplitArgs::q_tiles and token_mask; partials hold o as [ldq][D]
};

// AMX tiles take long causal calls only (prefill chunks). Their sums group keys by slot, so a tree node (its
// ancestors at scattered slots) or a row computed by tiles rather than by the vector kernel would not get the
// bits plain decoding gives it, and greedy speculative output would differ from plain greedy output at
// near-ties (seen on 1 of 56 e2e prompts). Decoding (T = 1) and every verification (tree-masked; the runner
// masks its chains too) stay on the vector kernel, whose rows are batch-invariant (docs/design.md 4.6).
constexpr int64_t kAmxMinCausalTokens = 64;

Kernels kernels(const Shapes& s, bool masked) {
  if (chosen_matrix_isa() == Isa::kAmx && !masked && s.T >= kAmxMinCausalTokens)
    return {amx_bf16::attend_split_tiles, amx_bf16::fold_partial_rows, true};
  switch (chosen_isa()) {
    case Isa::kAvx512: return {avx512::attend_split, avx512::fold_partial, false};
    case Isa::kAvx2: return {avx2::attend_split, avx2::fold_partial, false};
    default: return {generic::attend_split, generic::fold_partial, false};
  }
}

CacheType cache_type(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? CacheType::kBFloat16 : dtype == at::kHalf ? CacheType::kHalf : CacheType::kFloat;
}

// Runs fn(i, slot) for i in [0, n) on the intra-op threads, handing out indices one at a time: on a
// shared machine a thread can stall, and fixed ranges would make the others wait for it. slot < threads
// names the caller's scratch.
template <class Fn>
void parallel_dynamic(int64_t n, const Fn& fn) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(n, at::get_num_threads()), 1, [&](int64_t slot, int64_t) {
    for (int64_t i = next++; i < n; i = next++) fn(i, slot);
  });
}

// KV heads [h0, h0 + heads) of batch row b; its splits are tasks [first_task, first_task + splits).
struct HeadGroup {
  int64_t b, h0, heads, first_task, splits;
};

// KV heads per group: few query rows make the op memory bound, so a task then reads all heads of its
// positions together (contiguous); many rows make it compute bound, and one head per task balances
// better. Either way each row's arithmetic is the same (rows never mix).
int64_t heads_per_group(const Shapes& s, int64_t splits) {
  int64_t heads = s.row_vectors <= 2 ? s.Hkv : 1;
  while (heads > 1 && splits * ((s.Hkv + heads - 1) / heads) < 4 * at::get_num_threads()) heads = (heads + 1) / 2;
  return heads;
}

// Partials of one wave of tasks live at once; bounded so that long caches with many rows stay small.
constexpr int64_t kPartialBudgetFloats = int64_t{16} << 20;

// Float workspace of the calling thread, kept between calls (fresh pages would cost a fault each).
float* workspace(int64_t floats) {
  thread_local HugeBuffer buffer;
  return static_cast<float*>(buffer.reserve(floats * sizeof(float)));
}

at::Tensor tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                              const at::Tensor& cache_lens, const std::optional<at::Tensor>& tree_mask, double scale) {
  const Shapes s = check_inputs(q, k_cache, v_cache, cache_lens, tree_mask);
  const at::Tensor lens = cache_lens.contiguous();
  const int32_t* len = lens.data_ptr<int32_t>();

  int64_t longest = 0;
  for (int64_t b = 0; b < s.B; ++b) longest = std::max<int64_t>(longest, len[b] + s.T);
  const int64_t hp = heads_per_group(s, (longest + kAttentionSplit - 1) / kAttentionSplit);
  std::vector<HeadGroup> groups;
  std::vector<int64_t> group_of;  // task -> group
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h0 = 0; h0 < s.Hkv; h0 += hp) {
      const int64_t splits = (len[b] + s.T + kAttentionSplit - 1) / kAttentionSplit;
      groups.push_back({b, h0, std::min(hp, s.Hkv - h0), static_cast<int64_t>(group_of.size()), splits});
      group_of.insert(group_of.end(), splits, static_cast<int64_t>(groups.size()) - 1);
    }
  // task i's partials (one per head of its group) at offset[i]; waves [wave_start[w], wave_start[w + 1])
  const int64_t part = partial_floats(s.D, s.row_vectors), n_tasks = static_cast<int64_t>(group_of.size());
  std::vector<int64_t> offset(n_tasks + 1, 0), wave_start{0};
  for (int64_t i = 0; i < n_tasks; ++i) offset[i + 1] = offset[i] + groups[group_of[i]].heads * part;
  int64_t wave_floats = 0;
  while (wave_start.back() < n_tasks) {
    const int64_t w0 = wave_start.back();
    int64_t w1 = w0 + 1;  // at least one task, then as many as the budget holds
    while (w1 < n_tasks && offset[w1 + 1] - offset[w0] <= kPartialBudgetFloats) ++w1;
    wave_floats = std::max(wave_floats, offset[w1] - offset[w0]);
    wave_start.push_back(w1);
  }

  // workspace: qt [B, Hkv, D, ldq] (the vector path) | acc [B * Hkv][part] | partials of a wave | scratch per
  //   thread (the vector path) | query tiles (the AMX path; bf16, two per float)
  const Kernels kernel = kernels(s, tree_mask.has_value());
  const int64_t qt_floats = kernel.tiles ? 0 : s.B * s.Hkv * s.D * s.ldq(), acc_floats = s.B * s.Hkv * part;
  const int64_t scratch_floats =
      kernel.tiles ? 0 : split_scratch_floats(static_cast<int>(hp), static_cast<int>(s.D));
  const int64_t tile_floats =
      kernel.tiles ? amx_bf16::query_tile_elements(s.B * s.Hkv, static_cast<int>(s.D), static_cast<int>(s.row_vectors)) / 2
                   : 0;
  float* qt =
      workspace(qt_floats + acc_floats + wave_floats + at::get_num_threads() * scratch_floats + tile_floats);
  float *acc = qt + qt_floats, *partials = acc + acc_floats, *scratch = partials + wave_floats;
  auto* q_tiles = reinterpret_cast<uint16_t*>(scratch + at::get_num_threads() * scratch_floats);
  std::vector<uint16_t> visible;
  std::vector<int> depth;
  std::vector<uint64_t> token_mask;
  if (kernel.tiles) {
    const at::Tensor qf = q.to(at::kFloat).contiguous();
    amx_bf16::pack_query_tiles(qf.data_ptr<float>(), s.B, s.T, s.Hkv, static_cast<int>(s.group), static_cast<int>(s.D),
                          static_cast<int>(s.row_vectors), static_cast<float>(scale), q_tiles);
    token_mask = token_visibility(tree_mask, s);
  } else {
    pack_queries(q, scale, s, qt);
    visible = new_token_visibility(tree_mask, s);
    depth = new_token_depths(tree_mask, s);
  }
  at::Tensor out = at::empty({s.B, s.T, s.Hq, s.D}, q.options().dtype(at::kFloat));
  const CacheType type = cache_type(q.scalar_type());
  const char* k_base = static_cast<const char*>(k_cache.data_ptr());
  const char* v_base = static_cast<const char*>(v_cache.data_ptr());
  const int64_t element = k_cache.element_size();

  for (size_t w = 0; w + 1 < wave_start.size(); ++w) {
    const int64_t w0 = wave_start[w], w1 = wave_start[w + 1];
    std::vector<std::atomic<int64_t>> unfinished(groups.size());  // tasks of each group left in this wave
    for (int64_t i = w0; i < w1; ++i) ++unfinished[group_of[i]];

    // Folds group g's partials of this wave into acc in position order (the first one is copied: the
    // fold of an empty acc with it gives it back exactly); after its last split,
    // out[b, t, h * group + g, :] = o[:, r] / l[r] with r = t * group + g.
    auto fold_group = [&](const HeadGroup& g) {
      const int64_t first = std::max(g.first_task, w0), last = std::min(g.first_task + g.splits, w1);
      for (int64_t h = g.h0; h < g.h0 + g.heads; ++h) {
        float* o = acc + (g.b * s.Hkv + h) * part;
        for (int64_t i = first; i < last; ++i) {
          const float* partial = partials + offset[i] - offset[w0] + (h - g.h0) * part;
          if (i == g.first_task)
            std::copy(partial, partial + part, o);
          else
            kernel.fold_partial(o, partial, static_cast<int>(s.D), static_cast<int>(s.row_vectors));
        }
        if (last < g.first_task + g.splits) continue;
        const float* l = o + (s.D + 1) * s.ldq();
        std::vector<float*> dst(s.rows);
        std::vector<float> inverse(s.rows);
        for (int64_t r = 0; r < s.rows; ++r) {
          dst[r] = out.data_ptr<float>() + ((g.b * s.T + r / s.group) * s.Hq + h * s.group + r % s.group) * s.D;
          inverse[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;  // a row that sees nothing gives 0
        }
        if (kernel.tiles)  // o [ldq][D]
          for (int64_t r = 0; r < s.rows; ++r)
            for (int64_t d = 0; d < s.D; ++d) dst[r][d] = o[r * s.D + d] * inverse[r];
        else  // o [D][ldq]: reads in order; the rows written stay in L1 across 16 dims
          for (int64_t d = 0; d < s.D; ++d)
            for (int64_t r = 0; r < s.rows; ++r) dst[r][d] = o[d * s.ldq() + r] * inverse[r];
      }
    };

    parallel_dynamic(w1 - w0, [&](int64_t i, int64_t slot) {
      const HeadGroup& g = groups[group_of[w0 + i]];
      SplitArgs a;
      a.k = k_base + (g.b * k_cache.stride(0) + g.h0 * k_cache.stride(2)) * element;
      a.v = v_base + (g.b * v_cache.stride(0) + g.h0 * v_cache.stride(2)) * element;
      a.k_stride = k_cache.stride(1);
      a.k_head_stride = k_cache.stride(2);
      a.v_stride = v_cache.stride(1);
      a.v_head_stride = v_cache.stride(2);
      a.type = type;
      a.heads = static_cast<int>(g.heads);
      a.D = static_cast<int>(s.D);
      a.row_vectors = static_cast<int>(s.row_vectors);
      a.rows = static_cast<int>(s.rows);
      a.qt = kernel.tiles ? nullptr : qt + (g.b * s.Hkv + g.h0) * s.D * s.ldq();
      a.new_visible = kernel.tiles ? nullptr : visible.data() + g.b * s.T * s.row_vectors;
      a.new_depth = kernel.tiles ? nullptr : depth.data() + g.b * s.T;
      a.q_tiles = kernel.tiles ? q_tiles + amx_bf16::query_tile_elements(g.b * s.Hkv + g.h0, a.D, a.row_vectors) : nullptr;
      const int64_t words = (s.T + 63) / 64;
      a.token_mask = kernel.tiles ? token_mask.data() + g.b * s.T * words : nullptr;
      a.mask_words = static_cast<int>(words);
      a.group = static_cast<int>(s.group);
      a.T = static_cast<int>(s.T);
      a.cache_len = len[g.b];
      a.begin = (w0 + i - g.first_task) * kAttentionSplit;
      a.end = std::min<int64_t>(a.begin + kAttentionSplit, len[g.b] + s.T);
      a.prefetch_end = len[g.b] + s.T;
      a.partial = partials + offset[w0 + i] - offset[w0];
      a.scratch = scratch + slot * scratch_floats;
      kernel.attend_split(a);
      // the thread that finishes a group's last task of the wave folds the group
      if (unfinished[group_of[w0 + i]].fetch_sub(1, std::memory_order_acq_rel) == 1) fold_group(g);
    });
  }
  return out.to(q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }

}  // namespace specdec::cpu
