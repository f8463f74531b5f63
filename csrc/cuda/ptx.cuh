// PTX wrappers and the per-dtype tensor-core pieces shared by the CUDA kernels (W4A16 GEMM, tree
// attention). Each wrapper says what the instruction does and why it is used instead of plain C++.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace specdec::cuda {

// ---------------------------------------------------------------- PTX wrappers
// An L2 policy that evicts first: for streams read exactly once (W4A16 weights), so that they do not
// push the data that is re-read (activations, scales, split partials) out of L2.
__device__ inline uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// 16-byte async copy global -> shared, bypassing L1 (.cg: nothing here is re-read by the same SM
// soon); zero-fills when !pred (rows past M, k past K).
__device__ inline void cp_async16(void* smem, const void* gmem, bool pred) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(pred ? 16 : 0));
}
// The same with an L2 cache policy (for the weight stream).
__device__ inline void cp_async16_hint(void* smem, const void* gmem, bool pred, uint64_t policy) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst), "l"(gmem),
               "r"(pred ? 16 : 0), "l"(policy));
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

// (a & b) | c in one instruction (the compiler does not always fuse the two).
__device__ inline uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// 8x8 b16 matrices loaded transposed: with V stored [position][dim], lane 4g + t receives positions
// 2t, 2t + 1 of dim g, the B fragment of P V.
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
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

}  // namespace specdec::cuda
