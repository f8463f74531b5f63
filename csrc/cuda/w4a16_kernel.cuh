// W4A16 GEMM on tensor cores: y[M, N] = x[M, K] @ W.T, W 4-bit with group-wise scale and min
// (DESIGN 3.1). Kernel template on raw pointers; no torch headers (the launcher is w4a16_cuda.cu).
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
// A warp owns 16 columns; a block (4 warps) owns 64 columns and BM = 16 * M_TILES rows, and streams
// its weights exactly once through a STAGES-deep cp.async pipeline of BK = 64 k-steps per stage.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace specdec::cuda {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kBlockN = 16 * kWarps;  // columns per block; N is padded to it at prepack
constexpr int kBlockK = 64;           // k-steps per pipeline stage (4 MMA k16 steps)
constexpr int kStages = 4;
constexpr int kXRowPad = 8;           // halves of padding per shared x row: ldmatrix rows hit distinct banks

// ---------------------------------------------------------------- PTX wrappers
// 16-byte async copy global -> shared; zero-fills when !pred (rows past M, k past K).
__device__ inline void cp_async16(void* smem, const void* gmem, bool pred) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most `pending` committed groups are still in flight.
template <int pending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
}

// Four 8x8 b16 matrices from shared memory: exactly the A fragment of one m16n8k16 MMA.
__device__ inline void ldmatrix_x4(uint32_t (&a)[4], const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(addr));
}

// (a & b) | c in one instruction.
__device__ inline uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// ---------------------------------------------------------------- per-dtype pieces
template <class T>
struct Half;

template <>
struct Half<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400;  // fp16 1024.0 in both halves: 1024 + q is exact
  __device__ static T2 magic() { return __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400)); }
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
  __device__ static T2 broadcast(__half v) { return __half2half2(v); }
};

template <>
struct Half<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300;  // bf16 128.0 in both halves: 128 + q is exact
  __device__ static T2 magic() {
    return __halves2bfloat162(__ushort_as_bfloat16(0x4300), __ushort_as_bfloat16(0x4300));
  }
  __device__ static void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  __device__ static T2 broadcast(__nv_bfloat16 v) { return __bfloat162bfloat162(v); }
};

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

// ---------------------------------------------------------------- the kernel
template <class T, int M_TILES>
__global__ void __launch_bounds__(kThreads)
    w4a16_gemm_kernel(const T* __restrict__ x, const uint32_t* __restrict__ packed, const T* __restrict__ scales,
                      const T* __restrict__ mins, T* __restrict__ y, int M, int N, int K, int n_pad, int group_size) {
  constexpr int kBlockM = 16 * M_TILES;
  constexpr int kXRow = kBlockK + kXRowPad;
  __shared__ __align__(16) uint32_t smem_w[kStages][kBlockK / 16][kWarps][32];
  __shared__ __align__(16) T smem_x[kStages][kBlockM][kXRow];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int block_n = blockIdx.x * kBlockN, block_m = blockIdx.y * kBlockM;
  const int k16_blocks = K / 16, pairs = n_pad / 16, k_tiles = (K + kBlockK - 1) / kBlockK;

  // Stage `tile` of the weights (4 k16 rows x 512 B, one 16-byte copy per thread) and of x.
  auto fetch_to_shared = [&](int tile, int slot) {
    const int row = threadIdx.x / 32, chunk = threadIdx.x % 32;  // 32 chunks of 16 B per k16 row
    const int k16 = tile * (kBlockK / 16) + row;
    const uint32_t* src = packed + ((long)min(k16, k16_blocks - 1) * pairs + block_n / 16) * 32 + chunk * 4;
    cp_async16(&smem_w[slot][row][0][0] + chunk * 4, src, k16 < k16_blocks);
    for (int c = threadIdx.x; c < kBlockM * (kBlockK / 8); c += kThreads) {
      const int r = c / (kBlockK / 8), k = tile * kBlockK + (c % (kBlockK / 8)) * 8;
      const bool inside = block_m + r < M && k < K;
      const T* src_x = x + (long)min(block_m + r, M - 1) * K + min(k, K - 8);
      cp_async16(&smem_x[slot][r][(c % (kBlockK / 8)) * 8], src_x, inside);
    }
  };

  float acc[M_TILES][2][4] = {};
  const int col_left = block_n + warp * 16 + lane / 4, col_right = col_left + 8;
  using T2 = typename Half<T>::T2;
  T2 scale_left, scale_right, min_left, min_right;
  int loaded_group = -1;

  // Prologue: fill all but one stage.
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) fetch_to_shared(s, s);
    cp_async_commit();
  }
  for (int tile = 0; tile < k_tiles; ++tile) {
    cp_async_wait<kStages - 2>();  // stage `tile` has landed
    __syncthreads();               // ... for every thread, and slot (tile - 1) % S is free again
    if (tile + kStages - 1 < k_tiles) fetch_to_shared(tile + kStages - 1, (tile + kStages - 1) % kStages);
    cp_async_commit();  // possibly empty: keeps the group count uniform

    const int slot = tile % kStages;
#pragma unroll
    for (int ks = 0; ks < kBlockK / 16; ++ks) {
      const int k0 = tile * kBlockK + ks * 16;
      if (k0 >= K) break;
      const int group = k0 / group_size;
      if (group != loaded_group) {  // a k16 block never straddles groups (G is a multiple of 16)
        loaded_group = group;
        const long row = (long)group * n_pad;
        scale_left = Half<T>::broadcast(scales[row + col_left]);
        scale_right = Half<T>::broadcast(scales[row + col_right]);
        min_left = Half<T>::broadcast(mins[row + col_left]);
        min_right = Half<T>::broadcast(mins[row + col_right]);
      }
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
  }
  cp_async_wait<0>();

  // Epilogue: c0, c1 -> row g, columns 2t, 2t + 1; c2, c3 -> row g + 8.
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = block_m + mt * 16 + lane / 4 + (i / 2) * 8;
        const int col = block_n + warp * 16 + j * 8 + (lane % 4) * 2 + i % 2;
        if (row < M && col < N) y[(long)row * N + col] = Half<T>::from_float(acc[mt][j][i]);
      }
}

}  // namespace specdec::cuda
