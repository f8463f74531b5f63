// W4A16 GEMM on tensor cores: y[M, N] = x[M, K] @ W.T, W 4-bit with group-wise scale and min
// (docs/design.md 3.1). Kernel templates on raw pointers; no torch headers (the launcher is w4a16_cuda.cu).
//
// Prepacked weight layout (w4a16_prepack on CUDA): one uint32 per lane per (k16 block, 16 columns),
// holding exactly the B fragments of two m16n8k16 MMAs (columns p*16 + [0, 8) and p*16 + [8, 16)):
//
//   packed[k16][p][lane]   lane = 4 g + t   (g = lane / 4 picks the column, t = lane % 4 the k pair)
//   nibble 0 | nibble 4  ->  B[2t    , g    ], B[2t + 1, g    ]   b[0] of the left  n8 tile
//   nibble 1 | nibble 5  ->  B[2t + 8, g    ], B[2t + 9, g    ]   b[1] of the left  n8 tile
//   nibble 2 | nibble 6  ->  B[2t    , g + 8], B[2t + 1, g + 8]   b[0] of the right n8 tile
//   nibble 3 | nibble 7  ->  B[2t + 8, g + 8], B[2t + 9, g + 8]   b[1] of the right n8 tile
//
// so (word >> 4i) & 0x000F000F puts both values of one register into the two 16-bit halves, and an
// OR with the exponent of 1024 (fp16) or 128 (bf16) turns them into numbers in one instruction.
// Scales and mins are [K/G, N_pad]: one 128-byte row per group per block, staged with the weights.
//
// Work split: a warp owns 16 columns; a block (4 warps) owns 64 columns, BM = 16 * M_TILES rows and
// a contiguous range of k tiles (its split), and streams that range of the weights exactly once
// through a STAGES-deep cp.async pipeline of BK = 64 k per stage:
//
//            k tiles  0 ......................... K/64
//   block (n, m, 0)  [== split 0 ==][== split 1 ==]...     each split: fp32 partial [M, N] tile
//   block (n, m, 1)                 ^ same 64 columns      summed in split order by reduce_splits
//
// The number of splits depends on N, K and the GPU only, never on M, so a row's result does not
// depend on the other rows of the batch (bitwise, the property speculative verification needs).
#pragma once
#include <cstdint>

#include "ptx.cuh"

namespace specdec::cuda {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kBlockN = 16 * kWarps;  // columns per block; N is padded to it at prepack
constexpr int kBlockK = 64;           // k per pipeline stage (4 MMA k16 steps)
constexpr int kStages = 4;
constexpr int kMaxGroupsPerTile = kBlockK / 32;  // G >= 32: a k tile touches at most 2 groups
constexpr int kXRowPad = 8;  // halves of padding per shared x row: the 8 rows of an ldmatrix hit distinct banks

// Register i (0..3) of a lane's B fragments, dequantized: s * q + m for both k's of the register.
template <class T>
__device__ inline uint32_t dequant_pair(uint32_t word, int i, typename Half<T>::T2 scale,
                                        typename Half<T>::T2 min) {
  using T2 = typename Half<T>::T2;
  const uint32_t biased = lop3_and_or(word >> (4 * i), 0x000F000F, Half<T>::kMagic);
  const T2 q = __hsub2(*reinterpret_cast<const T2*>(&biased), Half<T>::magic());
  const T2 w = __hfma2(q, scale, min);
  return *reinterpret_cast<const uint32_t*>(&w);
}

// ---------------------------------------------------------------- the GEMM kernel
template <class T>
struct W4A16Params {
  const T* x;               // [M, K], rows 16-byte aligned
  const uint32_t* packed;   // [K/16, N_pad/16, 32] fragment order (above)
  const T* scales;          // [K/G, N_pad]
  const T* mins;            // [K/G, N_pad]
  T* y;                     // [M, N]: written directly when there is one split
  float* partial;           // [splits, M, N]: one fp32 partial per split otherwise
  int M, N, K, n_pad, group_size, tiles_per_split;
};

template <class T, int M_TILES>
__global__ void __launch_bounds__(kThreads) w4a16_gemm_kernel(const W4A16Params<T> p) {
  constexpr int kBlockM = 16 * M_TILES;
  constexpr int kXRow = kBlockK + kXRowPad;
  __shared__ __align__(16) uint32_t smem_w[kStages][kBlockK / 16][kWarps][32];
  __shared__ __align__(16) T smem_x[kStages][kBlockM][kXRow];
  __shared__ __align__(16) T smem_scale[kStages][2][kMaxGroupsPerTile][kBlockN];  // [.][0] scales, [.][1] mins

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int block_n = blockIdx.x * kBlockN, block_m = blockIdx.y * kBlockM;
  const int k16_blocks = p.K / 16, pairs = p.n_pad / 16, groups = p.K / p.group_size;
  const int k_tiles = (p.K + kBlockK - 1) / kBlockK;
  const int tile_begin = blockIdx.z * p.tiles_per_split;
  const int tile_end = min(k_tiles, tile_begin + p.tiles_per_split);
  const uint64_t weight_policy = evict_first_policy();

  // Phase 1: issue the copies of k tile `tile` into pipeline slot `slot` (no wait).
  auto fetch_to_shared = [&](int tile, int slot) {
    {  // weights: 4 k16 rows x 512 B, one 16-byte chunk per thread
      const int row = threadIdx.x / 32, chunk = threadIdx.x % 32;
      const int k16 = tile * (kBlockK / 16) + row;
      const uint32_t* src = p.packed + ((long)min(k16, k16_blocks - 1) * pairs + block_n / 16) * 32 + chunk * 4;
      cp_async16_hint(&smem_w[slot][row][0][0] + chunk * 4, src, k16 < k16_blocks, weight_policy);
    }
    for (int c = threadIdx.x; c < kBlockM * (kBlockK / 8); c += kThreads) {  // x: 8 halves per chunk
      const int r = c / (kBlockK / 8), k = tile * kBlockK + (c % (kBlockK / 8)) * 8;
      const bool inside = block_m + r < p.M && k < p.K;
      const T* src = p.x + (long)min(block_m + r, p.M - 1) * p.K + min(k, p.K - 8);
      cp_async16(&smem_x[slot][r][(c % (kBlockK / 8)) * 8], src, inside);
    }
    // scales and mins of the groups the tile touches (2 when G = 32, else 1): 8 chunks per 64-column row
    const int which = threadIdx.x / (kMaxGroupsPerTile * 8), g = threadIdx.x / 8 % kMaxGroupsPerTile;
    if (which < 2 && g * p.group_size < kBlockK) {
      const int chunk = threadIdx.x % 8, group = tile * kBlockK / p.group_size + g;
      const T* src = (which == 0 ? p.scales : p.mins) + (long)min(group, groups - 1) * p.n_pad + block_n + chunk * 8;
      cp_async16(&smem_scale[slot][which][g][chunk * 8], src, group < groups);
    }
  };

  // Phase 2: stage `tile` has landed for every thread, and the slot written next is free again.
  auto wait_for_stage = [&] {
    cp_async_wait<kStages - 2>();
    __syncthreads();
  };

  // Phase 3: the MMAs of one stage; weights are dequantized in registers right before use.
  using T2 = typename Half<T>::T2;
  float acc[M_TILES][2][4] = {};
  const int col = warp * 16 + lane / 4;  // this lane's left column in the block; right = col + 8
  auto matmul = [&](int tile, int slot) {
#pragma unroll
    for (int ks = 0; ks < kBlockK / 16; ++ks) {
      const int k0 = tile * kBlockK + ks * 16;
      if (k0 >= p.K) break;
      const int g = ks * 16 / p.group_size;  // a k16 block never straddles groups (G is a multiple of 16)
      const T2 scale_left = Half<T>::broadcast(smem_scale[slot][0][g][col]);
      const T2 scale_right = Half<T>::broadcast(smem_scale[slot][0][g][col + 8]);
      const T2 min_left = Half<T>::broadcast(smem_scale[slot][1][g][col]);
      const T2 min_right = Half<T>::broadcast(smem_scale[slot][1][g][col + 8]);
      const uint32_t word = smem_w[slot][ks][warp][lane];
      const uint32_t b_left0 = dequant_pair<T>(word, 0, scale_left, min_left);
      const uint32_t b_left1 = dequant_pair<T>(word, 1, scale_left, min_left);
      const uint32_t b_right0 = dequant_pair<T>(word, 2, scale_right, min_right);
      const uint32_t b_right1 = dequant_pair<T>(word, 3, scale_right, min_right);
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt) {
        uint32_t a[4];
        ldmatrix_x4(a, &smem_x[slot][mt * 16 + lane % 16][ks * 16 + (lane / 16) * 8]);
        Half<T>::mma(acc[mt][0], a, b_left0, b_left1);
        Half<T>::mma(acc[mt][1], a, b_right0, b_right1);
      }
    }
  };

  // Phase 4: accumulator (c0, c1 -> row g, columns 2t, 2t + 1; c2, c3 -> row g + 8) to y, or to this
  // split's fp32 partial.
  auto write_result = [&] {
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = block_m + mt * 16 + lane / 4 + (i / 2) * 8;
          const int n = block_n + warp * 16 + j * 8 + (lane % 4) * 2 + i % 2;
          if (row >= p.M || n >= p.N) continue;
          if (gridDim.z == 1)
            p.y[(long)row * p.N + n] = Half<T>::from_float(acc[mt][j][i]);
          else
            p.partial[((long)blockIdx.z * p.M + row) * p.N + n] = acc[mt][j][i];
        }
  };

  // The pipeline: keep kStages - 1 tiles in flight; one commit group per iteration, empty at the tail,
  // so that "wait until kStages - 2 groups are pending" always means "the current tile has landed".
  for (int s = 0; s < kStages - 1; ++s) {
    if (tile_begin + s < tile_end) fetch_to_shared(tile_begin + s, s);
    cp_async_commit();
  }
  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int step = tile - tile_begin;
    wait_for_stage();
    if (tile + kStages - 1 < tile_end) fetch_to_shared(tile + kStages - 1, (step + kStages - 1) % kStages);
    cp_async_commit();
    matmul(tile, step % kStages);
  }
  cp_async_wait<0>();
  write_result();
}

// y[m, n] = sum over splits s (in order) of partial[s, m, n]: deterministic, independent of M.
template <class T>
__global__ void w4a16_reduce_splits_kernel(const float* __restrict__ partial, T* __restrict__ y, long mn, int splits) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < mn; i += (long)gridDim.x * blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < splits; ++s) sum += partial[s * mn + i];
    y[i] = Half<T>::from_float(sum);
  }
}

}  // namespace specdec::cuda
