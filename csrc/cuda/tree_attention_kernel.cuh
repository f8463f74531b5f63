// Tree attention on tensor cores (docs/design.md 3.2, 3.3; the oracle is reference.tree_attention): the T new
// tokens of each sequence attend to its cached positions and, among themselves, to what the bit-packed
// tree mask allows (causal when there is none). Split-KV ("flash decoding") with FlashAttention-2 style
// warps; kernel templates on raw pointers, no torch headers (the launcher is tree_attention_cuda.cu).
//
// Work split. The query rows of one KV head are its T * group query heads (GQA), row = t * group + g:
//
//   grid (KV split, tile of 64 rows, b * Hkv + h)      block = 4 warps, warp w owns rows 16w .. 16w + 15
//   positions  0 ........ 512 ........ 1024 ..... cache_len + T
//              [ split 0 ][  split 1  ][ split 2 ]   each split: 8 chunks of 64 positions, double-buffered
//                                                    through shared memory by cp.async
//
// Per chunk a warp computes S = Q K^T (16 x 64, mma m16n8k16, fp32), masks it, updates its running
// row max m and row sum l (online softmax, base-2 exponent), and accumulates O += P V with P taken
// straight from the S accumulators (the C fragment of two n8 tiles is the A fragment of one k16 step).
// Each split writes (O, m, l) in fp32; merge_splits combines the splits of a row in order.
//
// Splits and chunks sit at absolute positions (every 512 and 64), rows never mix, and a chunk with nothing
// visible leaves (O, m, l) bitwise unchanged: a token's result does not depend on how many tokens are
// verified with it (T at once == one at a time, bitwise), like the CPU kernel.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "block_reduce.cuh"
#include "ptx.cuh"

namespace specdec::cuda {

constexpr int kAttnWarps = 4, kAttnThreads = 32 * kAttnWarps;
constexpr int kAttnTileRows = 16 * kAttnWarps;  // query rows per block
constexpr int kAttnChunk = 64;                  // positions per pipeline stage (bits of one mask word)
constexpr int kAttnSplit = 8 * kAttnChunk;      // positions per KV split
constexpr int kAttnRowPad = 8;                  // halves of padding per shared row: ldmatrix rows hit distinct banks

// Two floats -> one register of two 16-bit values (the first in the low half).
__device__ inline uint32_t pack2(__half, float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ inline uint32_t pack2(__nv_bfloat16, float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <class scalar_t>
struct TreeAttentionParams {
  const scalar_t* q;             // [B, T, Hq, D], 16-byte aligned
  const scalar_t* k_cache;       // [B, S, Hkv, D]
  const scalar_t* v_cache;       // [B, S, Hkv, D]
  const int32_t* cache_lens;     // [B]
  const uint64_t* tree_mask;     // [B, T, mask_words], or nullptr for causal
  float* partial_o;              // [B * Hkv, splits, rows, D]
  float* partial_ml;             // [B * Hkv, splits, rows, 2]: m (log2 units), l
  float scale_log2;              // softmax scale * log2(e)
  int T, Hq, Hkv, group, rows, S, splits, mask_words;
};

// Bit i set iff token t sees position first + i (first is a multiple of 64).
template <class scalar_t>
__device__ inline uint64_t visible_bits(const TreeAttentionParams<scalar_t>& p, int b, int t, int cache_len, int first) {
  const int cached = cache_len - first;  // positions before cache_len are visible to every token
  const uint64_t cached_bits = cached >= 64 ? ~0ull : cached <= 0 ? 0ull : (1ull << cached) - 1;
  const int j0 = first - cache_len;      // the new token at bit 0 (negative: bit -j0 is token 0)
  if (j0 >= p.T) return cached_bits;
  uint64_t own;
  if (p.tree_mask != nullptr) {
    const uint64_t* row = p.tree_mask + ((int64_t)b * p.T + t) * p.mask_words;
    auto word = [&](int w) { return w >= 0 && w < p.mask_words ? row[w] : 0ull; };
    if (j0 >= 0) {
      const int w = j0 / 64, shift = j0 % 64;
      own = word(w) >> shift;
      if (shift != 0) own |= word(w + 1) << (64 - shift);
    } else {
      own = -j0 >= 64 ? 0ull : word(0) << -j0;
    }
    const int past_end = p.T - j0;  // bits at or after this one are beyond the last new token
    if (past_end < 64) own &= (1ull << past_end) - 1;
  } else {  // causal: tokens j <= t, i.e. bits [-j0, t - j0]
    const int lo = -j0 > 0 ? -j0 : 0, hi = t - j0;
    if (hi < lo || lo >= 64) {
      own = 0;
    } else {
      const uint64_t upto = hi >= 63 ? ~0ull : (1ull << (hi + 1)) - 1;
      own = upto & ~((1ull << lo) - 1);
    }
  }
  return cached_bits | own;
}

template <class T, int D>
__global__ void __launch_bounds__(kAttnThreads) tree_attention_kernel(const TreeAttentionParams<T> p) {
  constexpr int kRow = D + kAttnRowPad;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // [2 stages][K, V][64 positions][kRow]; Q is staged in stage 1's K before the first chunk needs it.
  T (*kv)[2][kAttnChunk][kRow] = reinterpret_cast<T (*)[2][kAttnChunk][kRow]>(smem_raw);
  T (*q_smem)[kRow] = kv[1][0];

  const int split = blockIdx.x, tile_row0 = blockIdx.y * kAttnTileRows, bh = blockIdx.z;
  const int b = bh / p.Hkv, h = bh % p.Hkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int cache_len = p.cache_lens[b], end = cache_len + p.T;
  const int chunk_begin = split * (kAttnSplit / kAttnChunk);
  const int chunk_end = min(chunk_begin + kAttnSplit / kAttnChunk, (end + kAttnChunk - 1) / kAttnChunk);
  if (chunk_begin >= chunk_end) return;  // past this sequence's end: merge_splits never reads it

  // Phase 1: copies of one chunk of K and V (positions past the end are zero-filled, never read from).
  auto fetch_chunk = [&](int chunk, int stage) {
    constexpr int kPieces = kAttnChunk * (D / 8);  // 16-byte pieces per matrix
    for (int i = threadIdx.x; i < 2 * kPieces; i += kAttnThreads) {
      const int matrix = i / kPieces, position = i % kPieces / (D / 8), piece = i % (D / 8);
      const int pos = chunk * kAttnChunk + position;
      const T* base = matrix == 0 ? p.k_cache : p.v_cache;
      const T* src = base + (((int64_t)b * p.S + (pos < end ? pos : 0)) * p.Hkv + h) * D + piece * 8;
      cp_async16(&kv[stage][matrix][position][piece * 8], src, pos < end);
    }
  };
  auto fetch_queries = [&] {
    for (int i = threadIdx.x; i < kAttnTileRows * (D / 8); i += kAttnThreads) {
      const int r = i / (D / 8), piece = i % (D / 8), row = tile_row0 + r;
      const int t = row / p.group, head = h * p.group + row % p.group;
      const T* src = p.q + (((int64_t)b * p.T + (row < p.rows ? t : 0)) * p.Hq + head) * D + piece * 8;
      cp_async16(&q_smem[r][piece * 8], src, row < p.rows);
    }
  };

  fetch_queries();
  fetch_chunk(chunk_begin, 0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t q_frag[D / 16][4];  // this warp's 16 rows as A fragments, for every k16 step of D
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) ldmatrix_x4(q_frag[ks], &q_smem[warp * 16 + lane % 16][ks * 16 + (lane / 16) * 8]);

  const int warp_row0 = tile_row0 + warp * 16;
  const bool warp_active = warp_row0 < p.rows;
  // This lane's two rows (g and g + 8 of the warp's 16) and their tokens.
  const int rows_of_lane[2] = {warp_row0 + lane / 4, warp_row0 + lane / 4 + 8};
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  // Phase 2: one chunk: S = Q K^T, mask, online softmax, O += P V.
  auto attend_chunk = [&](int chunk, int stage) {
    float s[kAttnChunk / 8][4] = {};
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
      for (int np = 0; np < kAttnChunk / 16; ++np) {
        uint32_t k_frag[4];
        ldmatrix_x4(k_frag, &kv[stage][0][np * 16 + (lane / 16) * 8 + lane % 8][ks * 16 + (lane / 8 % 2) * 8]);
        Half<T>::mma(s[2 * np], q_frag[ks], k_frag[0], k_frag[1]);
        Half<T>::mma(s[2 * np + 1], q_frag[ks], k_frag[2], k_frag[3]);
      }
    const int first = chunk * kAttnChunk;
    uint64_t visible[2] = {~0ull, ~0ull};
    if (first + kAttnChunk > cache_len)  // the chunk reaches the new tokens (or the end)
      for (int r = 0; r < 2; ++r)
        visible[r] = rows_of_lane[r] < p.rows ? visible_bits(p, b, rows_of_lane[r] / p.group, cache_len, first) : 0;
    float chunk_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kAttnChunk / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int column = n * 8 + (lane % 4) * 2 + i % 2;
        s[n][i] = (visible[i / 2] >> column) & 1 ? s[n][i] * p.scale_log2 : -INFINITY;
        chunk_max[i / 2] = fmaxf(chunk_max[i / 2], s[n][i]);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // the 4 lanes of a quad share a row
      chunk_max[r] = fmaxf(chunk_max[r], __shfl_xor_sync(kFullWarp, chunk_max[r], 1));
      chunk_max[r] = fmaxf(chunk_max[r], __shfl_xor_sync(kFullWarp, chunk_max[r], 2));
      const float m_new = fmaxf(m[r], chunk_max[r]);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: keep exp2 away from -inf - -inf
      alpha[r] = exp2f(m[r] - m_use[r]);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < kAttnChunk / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[n][i] = exp2f(s[n][i] - m_use[i / 2]);
        l[i / 2] += s[n][i];
      }
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[dn][i] *= alpha[i / 2];
#pragma unroll
    for (int kk = 0; kk < kAttnChunk / 16; ++kk) {
      const uint32_t a[4] = {pack2(T{}, s[2 * kk][0], s[2 * kk][1]), pack2(T{}, s[2 * kk][2], s[2 * kk][3]),
                             pack2(T{}, s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2(T{}, s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t v_frag[4];
        ldmatrix_x4_trans(v_frag, &kv[stage][1][kk * 16 + (lane / 8 % 2) * 8 + lane % 8][dp * 16 + (lane / 16) * 8]);
        Half<T>::mma(o[2 * dp], a, v_frag[0], v_frag[1]);
        Half<T>::mma(o[2 * dp + 1], a, v_frag[2], v_frag[3]);
      }
    }
  };

  // The pipeline: chunk i is computed while chunk i + 1 lands in the other stage.
  for (int chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    const int stage = (chunk - chunk_begin) % 2;
    cp_async_wait<0>();
    __syncthreads();  // the chunk landed for all threads; the other stage (at first: Q) is no longer read
    if (chunk + 1 < chunk_end) fetch_chunk(chunk + 1, 1 - stage);
    cp_async_commit();
    if (warp_active) attend_chunk(chunk, stage);
  }

  // Phase 3: this split's (O, m, l) per row; l is summed over the 4 lanes of a quad first.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(kFullWarp, l[r], 1);
    l[r] += __shfl_xor_sync(kFullWarp, l[r], 2);
  }
  if (!warp_active) return;
  for (int r = 0; r < 2; ++r) {
    const int row = rows_of_lane[r];
    if (row >= p.rows) continue;
    const int64_t slot = ((int64_t)bh * p.splits + split) * p.rows + row;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn)
      *reinterpret_cast<float2*>(&p.partial_o[slot * D + dn * 8 + (lane % 4) * 2]) =
          make_float2(o[dn][2 * r], o[dn][2 * r + 1]);
    if (lane % 4 == 0) *reinterpret_cast<float2*>(&p.partial_ml[slot * 2]) = make_float2(m[r], l[r]);
  }
}

// out[b, t, h * group + g, :] = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s over the splits of the row,
// in split order; splits where the row sees nothing (l = 0) are skipped. One block per (row, b * Hkv + h).
template <class T>
__global__ void tree_attention_merge_kernel(const float* __restrict__ partial_o, const float* __restrict__ partial_ml,
                                            const int32_t* __restrict__ cache_lens, T* __restrict__ out, int T_new,
                                            int Hq, int Hkv, int group, int rows, int splits, int D) {
  const int row = blockIdx.x, bh = blockIdx.y, b = bh / Hkv, h = bh % Hkv;
  const int used = (cache_lens[b] + T_new + kAttnSplit - 1) / kAttnSplit;
  const int64_t first = (int64_t)bh * splits * rows + row;  // slot of split 0; split s is s * rows further
  float top = -INFINITY;
  for (int s = 0; s < used; ++s)
    if (partial_ml[(first + (int64_t)s * rows) * 2 + 1] > 0.f) top = fmaxf(top, partial_ml[(first + (int64_t)s * rows) * 2]);
  const int t = row / group, head = h * group + row % group;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float numerator = 0.f, denominator = 0.f;
    for (int s = 0; s < used; ++s) {
      const int64_t slot = first + (int64_t)s * rows;
      const float l_s = partial_ml[slot * 2 + 1];
      if (l_s == 0.f) continue;
      const float weight = exp2f(partial_ml[slot * 2] - top);
      numerator += weight * partial_o[slot * D + d];
      denominator += weight * l_s;
    }
    out[(((int64_t)b * T_new + t) * Hq + head) * D + d] = Half<T>::from_float(numerator / denominator);
  }
}

}  // namespace specdec::cuda
