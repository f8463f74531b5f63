// Block-wide reductions and scans in a fixed order (butterfly within a warp, then the warps' results in
// warp order), so a result never depends on timing: the same inputs give the same bits on every run.
// Every thread of the block must call them (they contain barriers); all threads get the result.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace specdec::cuda {

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T, class Op>
__device__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(kFullWarp, v, offset));
  return v;
}

// scratch: >= 32 elements of shared memory, free for the duration of the call.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {  // the warps' results, folded in warp order
    T w = scratch[0];
    for (int i = 1; i < warps; ++i) w = op(w, scratch[i]);
    scratch[0] = w;
  }
  __syncthreads();
  const T result = scratch[0];
  __syncthreads();  // scratch is free again
  return result;
}

struct Sum {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct Min {
  template <class T>
  __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};
struct MaxInt {
  template <class T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Exclusive prefix sum over the threads in thread order; scratch >= 32 elements.
template <class T>
__device__ T block_exclusive_scan(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  T inclusive = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const T up = __shfl_up_sync(kFullWarp, inclusive, offset);
    if (lane >= offset) inclusive += up;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (threadIdx.x == 0) {  // warp totals -> exclusive warp offsets, in order
    T running = 0;
    for (int i = 0; i < warps; ++i) {
      const T total = scratch[i];
      scratch[i] = running;
      running += total;
    }
  }
  __syncthreads();
  T exclusive = __shfl_up_sync(kFullWarp, inclusive, 1);
  if (lane == 0) exclusive = 0;
  const T result = scratch[warp] + exclusive;
  __syncthreads();
  return result;
}

}  // namespace specdec::cuda
