// Fused tree verification on the GPU (docs/design.md 4.3; the oracle is reference.tree_verify_greedy/_sample).
// One block per tree: it walks from the root and reduces only the logits rows of the nodes it visits
// (<= depth + 1 of the T rows), all threads of the block sweeping one vocabulary row at a time.
//
// Sampling keeps p unnormalised with a running total, like the CPU kernel: a rejected top-k child costs
// O(1) (p[x] = 0, total -= p[x]). The row of p lives in a global workspace [B, V] (a vocabulary row does
// not fit in shared memory); each thread re-reads the entries it wrote, so the traffic stays in L1/L2.
// top-k and top-p thresholds are found by radix selection on the float bits (p >= 0, so the bit patterns
// order like the values): four passes of 8 bits with a 256-bin histogram in shared memory. Every sum is
// taken in a fixed order (block_reduce.cuh; top-p masses in 2^-40 fixed point), so runs are repeatable.
#pragma once
#include <cfloat>
#include <cstdint>

#include "block_reduce.cuh"

namespace specdec::cuda {

constexpr int kVerifyThreads = 1024;
constexpr int kMaxNodes = 256;  // = kMaxTreeNodes of specdec/tree_checks.h (checked by the launcher)

// One tree in shared memory, plus the path walked so far.
struct TreeInShared {
  int parent[kMaxNodes];
  int64_t token[kMaxNodes];
  int path[kMaxNodes];

  __device__ void load(const int64_t* tokens, const int64_t* parents, int T) {
    for (int i = threadIdx.x; i < T; i += blockDim.x) {
      parent[i] = static_cast<int>(parents[i]);
      token[i] = tokens[i];
    }
    __syncthreads();
  }
};

// accept_idx row (path then -1), accept_len and bonus of tree b.
__device__ inline void write_verdict(const TreeInShared& tree, int T, int accepted, int64_t bonus_token,
                                     int64_t* accept_idx, int64_t* accept_len, int64_t* bonus) {
  for (int i = threadIdx.x; i < T; i += blockDim.x) accept_idx[i] = i < accepted ? tree.path[i] : -1;
  if (threadIdx.x == 0) {
    *accept_len = accepted;
    *bonus = bonus_token;
  }
}

// ---------------------------------------------------------------- greedy
struct ArgMax {
  float value;
  int64_t index;
};
// torch.argmax order: NaN above everything, then larger values, ties to the lower index.
__device__ inline ArgMax better(ArgMax a, ArgMax b) {
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan != b_nan) return a_nan ? a : b;
  if (!a_nan && a.value != b.value) return a.value > b.value ? a : b;
  return a.index <= b.index ? a : b;
}
__device__ inline ArgMax shfl_xor(ArgMax v, int offset) {
  return {__shfl_xor_sync(kFullWarp, v.value, offset), __shfl_xor_sync(kFullWarp, v.index, offset)};
}

template <class scalar_t>
__device__ int64_t row_argmax(const scalar_t* row, int64_t V, ArgMax* scratch) {
  ArgMax best{-INFINITY, INT64_MAX};
#pragma unroll 4
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) best = better(best, {to_float(row[v]), v});
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) best = better(best, shfl_xor(best, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < (int)(blockDim.x / 32); ++i) best = better(best, scratch[i]);
    scratch[0] = best;
  }
  __syncthreads();
  const int64_t index = scratch[0].index;
  __syncthreads();
  return index;
}

// The first child (in index order) of `node` whose token is `target`, or T.
__device__ inline int matching_child(const TreeInShared& tree, int T, int node, int64_t target, int* scratch) {
  int child = T;
  for (int c = node + 1 + threadIdx.x; c < T; c += blockDim.x)
    if (tree.parent[c] == node && tree.token[c] == target) child = min(child, c);
  return block_reduce(child, Min{}, scratch);
}

template <class scalar_t>
__global__ void __launch_bounds__(kVerifyThreads)
    tree_verify_greedy_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ tokens,
                              const int64_t* __restrict__ parents, int T, int64_t V, int64_t* accept_idx,
                              int64_t* accept_len, int64_t* bonus) {
  __shared__ TreeInShared tree;
  __shared__ ArgMax argmax_scratch[32];
  __shared__ int int_scratch[32];
  const int b = blockIdx.x;
  tree.load(tokens + (int64_t)b * T, parents + (int64_t)b * T, T);
  int node = 0, accepted = 0;
  int64_t target;
  while (true) {
    if (threadIdx.x == 0) tree.path[accepted] = node;
    ++accepted;
    target = row_argmax(logits + ((int64_t)b * T + node) * V, V, argmax_scratch);
    const int child = matching_child(tree, T, node, target, int_scratch);
    if (child == T) break;
    node = child;
  }
  __syncthreads();  // the path is complete
  write_verdict(tree, T, accepted, target, accept_idx + (int64_t)b * T, accept_len + b, bonus + b);
}

// ---------------------------------------------------------------- sampling
struct SampleParams {
  float inv_temperature, top_p;
  int top_k;
};

// Shared memory of the radix selections.
struct SelectScratch {
  unsigned long long mass[256];  // top-p: 2^-40 fixed-point mass per bin
  int count[256];
  unsigned bin;                  // the chosen bin of a pass
  unsigned long long above;      // what lies above it (count or mass)
};

// Warp 0 scans the 256 bins from the top: lane l owns bins 255 - 8l ... 248 - 8l. Returns per lane the
// exclusive sum of everything above its first bin.
template <class C>
__device__ C bins_above_lane(const C* hist) {
  const int lane = threadIdx.x % 32;
  C own = 0;
  for (int i = 0; i < 8; ++i) own += hist[255 - 8 * lane - i];
  C inclusive = own;
  for (int offset = 1; offset < 32; offset *= 2) {
    const C up = __shfl_up_sync(kFullWarp, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  return inclusive - own;
}

// The k-th largest of p[0, V) (k >= 1), counting duplicates: keep p >= it for top-k (ties kept).
__device__ inline float kth_largest(const float* p, int64_t V, int k, SelectScratch& s) {
  unsigned prefix = 0, prefix_mask = 0;
  int remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) s.count[i] = 0;
    __syncthreads();
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const unsigned bits = __float_as_uint(p[v]);
      if ((bits & prefix_mask) == prefix) atomicAdd(&s.count[(bits >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the bin holding the remaining-th largest: above < remaining <= above + count
      int above = bins_above_lane(s.count);
      for (int i = 0; i < 8; ++i) {
        const int bin = 255 - 8 * threadIdx.x - i;
        if (above < remaining && above + s.count[bin] >= remaining) {
          s.bin = bin;
          s.above = above;
        }
        above += s.count[bin];
      }
    }
    __syncthreads();
    prefix |= s.bin << shift;
    prefix_mask |= 255u << shift;
    remaining -= static_cast<int>(s.above);
    __syncthreads();
  }
  return __uint_as_float(prefix);
}

// top-p cutoff: the smallest value c of p with mass(p > c) < top_p * total; keep p >= c (ties kept).
// This is reference.target_probs's rule (the last sorted value whose preceding mass is < top_p).
__device__ inline float top_p_cutoff(const float* p, int64_t V, float total, float top_p, SelectScratch& s) {
  constexpr double kOne = 1099511627776.0;  // 2^40
  const double unit = kOne / total;
  const unsigned long long budget = static_cast<unsigned long long>(top_p * kOne);
  unsigned prefix = 0, prefix_mask = 0;
  unsigned long long above_prefix = 0;  // mass of everything above the values with this prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
      s.mass[i] = 0;
      s.count[i] = 0;
    }
    if (threadIdx.x == 0) s.bin = 256;
    __syncthreads();
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      const float value = p[v];
      const unsigned bits = __float_as_uint(value);
      if (value > 0 && (bits & prefix_mask) == prefix) {
        atomicAdd(&s.mass[(bits >> shift) & 255], static_cast<unsigned long long>(value * unit));
        atomicAdd(&s.count[(bits >> shift) & 255], 1);
      }
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the lowest non-empty bin whose mass above is < budget
      unsigned long long above = above_prefix + bins_above_lane(s.mass);
      unsigned lowest = 256;
      unsigned long long lowest_above = 0;
      for (int i = 0; i < 8; ++i) {
        const int bin = 255 - 8 * threadIdx.x - i;
        if (s.count[bin] > 0 && above < budget) {
          lowest = bin;
          lowest_above = above;
        }
        above += s.mass[bin];
      }
      const unsigned chosen = warp_reduce(lowest, Min{});
      if (lowest == chosen && chosen < 256) {
        s.bin = chosen;
        s.above = lowest_above;
      }
    }
    __syncthreads();
    prefix |= s.bin << shift;
    prefix_mask |= 255u << shift;
    above_prefix = s.above;
    __syncthreads();
  }
  return __uint_as_float(prefix);
}

// p[v] = 0 where p[v] < threshold; returns the new total.
__device__ inline float drop_below(float* p, int64_t V, float threshold, float* scratch) {
  float sum = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    float value = p[v];
    if (value < threshold) p[v] = value = 0.f;
    sum += value;
  }
  return block_reduce(sum, Sum{}, scratch);
}

// p = exp(logits / temperature - max) with top-k, then top-p applied, unnormalised; returns its total
// (reference.target_probs is p / total).
template <class scalar_t>
__device__ float target_probs(const scalar_t* row, float* p, int64_t V, const SampleParams& params, float* scratch,
                             SelectScratch& select) {
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, to_float(row[v]) * params.inv_temperature);
  m = block_reduce(m, Max{}, scratch);
  float sum = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float e = expf(to_float(row[v]) * params.inv_temperature - m);
    p[v] = e;
    sum += e;
  }
  float total = block_reduce(sum, Sum{}, scratch);
  if (params.top_k > 0 && params.top_k < V) total = drop_below(p, V, kth_largest(p, V, params.top_k, select), scratch);
  if (params.top_p < 1.f) total = drop_below(p, V, top_p_cutoff(p, V, total, params.top_p, select), scratch);
  return total;
}

// Rejection of a sampled draft token: p = max(p / total - q, 0); returns the new total.
__device__ inline float residual(float* p, const float* q, int64_t V, float total, float* scratch) {
  float sum = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float value = fmaxf(p[v] / total - q[v], 0.f);
    p[v] = value;
    sum += value;
  }
  return block_reduce(sum, Sum{}, scratch);
}

// Inverse CDF: the first token whose cumulative mass exceeds u * total, never a zero-mass one (the last
// non-zero token if rounding leaves the target past the end). Each thread owns a contiguous slice of
// the vocabulary: slice sums, a scan over the slices, then one thread walks the slice that crosses.
__device__ inline int64_t sample_from(const float* p, int64_t V, float total, float u, double* scan_scratch,
                                      int64_t* index_scratch, int* int_scratch) {
  const int64_t slice = (V + blockDim.x - 1) / blockDim.x, begin = threadIdx.x * slice, end = min(V, begin + slice);
  double sum = 0;
  int64_t last_nonzero = -1;
  for (int64_t v = begin; v < end; ++v)
    if (p[v] > 0) {
      sum += p[v];
      last_nonzero = v;
    }
  const double before = block_exclusive_scan(sum, scan_scratch), target = static_cast<double>(u) * total;
  const int crossing = block_reduce(last_nonzero >= 0 && before + sum > target ? (int)threadIdx.x : INT32_MAX, Min{},
                                    int_scratch);
  if (crossing == INT32_MAX) return max(block_reduce(last_nonzero, MaxInt{}, index_scratch), int64_t{0});
  if ((int)threadIdx.x == crossing) {
    double cdf = before;
    int64_t found = last_nonzero;
    for (int64_t v = begin; v < end; ++v)
      if (p[v] > 0) {
        cdf += p[v];
        if (cdf > target) {
          found = v;
          break;
        }
      }
    index_scratch[0] = found;
  }
  __syncthreads();
  const int64_t index = index_scratch[0];
  __syncthreads();
  return index;
}

template <class scalar_t>
__global__ void __launch_bounds__(kVerifyThreads)
    tree_verify_sample_kernel(const scalar_t* __restrict__ logits, const float* __restrict__ draft_probs,
                              const float* __restrict__ uniforms, const int64_t* __restrict__ tokens,
                              const int64_t* __restrict__ parents, int T, int64_t V, SampleParams params,
                              float* __restrict__ workspace, int64_t* accept_idx, int64_t* accept_len,
                              int64_t* bonus) {
  __shared__ TreeInShared tree;
  __shared__ SelectScratch select;
  __shared__ float float_scratch[32];
  __shared__ double scan_scratch[32];
  __shared__ int64_t index_scratch[32];
  __shared__ int int_scratch[32];
  const int b = blockIdx.x;
  float* p = workspace + (int64_t)b * V;
  const float* u = uniforms + (int64_t)b * (T + 1);
  tree.load(tokens + (int64_t)b * T, parents + (int64_t)b * T, T);
  int node = 0, accepted = 0;
  float total;
  while (true) {
    if (threadIdx.x == 0) tree.path[accepted] = node;
    ++accepted;
    total = target_probs(logits + ((int64_t)b * T + node) * V, p, V, params, float_scratch, select);
    const float* q = draft_probs != nullptr ? draft_probs + ((int64_t)b * T + node) * V : nullptr;
    int child = -1;
    // Children in index order; every thread takes the same decisions from the same values.
    for (int c = node + 1; c < T && child < 0; ++c) {
      if (tree.parent[c] != node) continue;
      const int64_t x = tree.token[c];
      const float px = p[x];
      if (q == nullptr) {  // deterministic draft: accept with p(x), else remove x from p
        if (u[c] * total < px) {
          child = c;
        } else {
          total -= px;
          __syncthreads();  // every thread has read p[x]
          if (threadIdx.x == 0) p[x] = 0.f;
          __syncthreads();
        }
      } else {  // sampled draft: accept with min(1, p / q), else p <- max(p - q, 0)
        if (px > 0 && u[c] * q[x] * total < px) child = c;
        else total = residual(p, q, V, total, float_scratch);
      }
    }
    if (child < 0) break;
    node = child;
  }
  const int64_t bonus_token = sample_from(p, V, total, u[T], scan_scratch, index_scratch, int_scratch);
  write_verdict(tree, T, accepted, bonus_token, accept_idx + (int64_t)b * T, accept_len + b, bonus + b);
}

}  // namespace specdec::cuda
