// kv_compact on the GPU (docs/design.md 3.3; the oracle is reference.kv_compact): entry cache_len + accept_idx[i]
// moves to cache_len + i for i < accept_len, in every layer of a stacked cache, in K and in V.
//
//   grid (slices of one entry, B, 2 * L)     one thread = one Vec (16/8/4/2/1 bytes) of an entry
//   position:  cache_len + 0  1  2  3  4  5 ...          accept_idx = [0, 2, 3, 5]
//                          <- --+  |     |
//                             <----+     |     sources never precede destinations (idx[i] >= i, increasing),
//                                <-------+     so no move overwrites a later move's source
//
// Each thread touches only its own bytes of every entry, so moves need no barrier; a thread reads a
// batch of sources before writing their destinations (memory-level parallelism), which is safe because
// no destination of a batch is a source of the same or a later batch.
#pragma once
#include <cstdint>

namespace specdec::cuda {

constexpr int kCompactThreads = 128;
constexpr int kCompactBatch = 8;  // moves whose sources are loaded together

template <class Vec>
__global__ void __launch_bounds__(kCompactThreads)
    kv_compact_kernel(Vec* __restrict__ k_cache, Vec* __restrict__ v_cache, const int32_t* __restrict__ cache_lens,
                      const int64_t* __restrict__ accept_idx, const int64_t* __restrict__ accept_len, int B,
                      int64_t S, int T, int64_t entry_vecs) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int b = blockIdx.y, layer = blockIdx.z / 2;
  if (e >= entry_vecs) return;
  Vec* cache = blockIdx.z % 2 == 0 ? k_cache : v_cache;
  Vec* row = cache + (((int64_t)layer * B + b) * S + cache_lens[b]) * entry_vecs + e;  // entry cache_len, Vec e
  const int64_t* idx = accept_idx + (int64_t)b * T;
  const int moves = static_cast<int>(accept_len[b]);
  for (int first = 1; first < moves; first += kCompactBatch) {
    Vec moved[kCompactBatch];
#pragma unroll
    for (int j = 0; j < kCompactBatch; ++j)
      if (first + j < moves) moved[j] = row[idx[first + j] * entry_vecs];
#pragma unroll
    for (int j = 0; j < kCompactBatch; ++j)
      if (first + j < moves && idx[first + j] != first + j) row[(int64_t)(first + j) * entry_vecs] = moved[j];
  }
}

}  // namespace specdec::cuda
