// The per-ISA entry points of the CPU W4A16 kernel (w4a16_isa.cpp) and their shared arguments.
#pragma once

namespace specdec::cpu {

struct W4A16Args {
  const float* x;                 // [M, K] float32, contiguous
  int M, K, group_size;
  const unsigned char* qpacked;   // [tiles, K/2, 16]
  const float* scales;            // [tiles, K/G, 16]
  const float* mins;              // [tiles, K/G, 16]
  float* y;                       // [M, ldy] float32, ldy = tiles * 16
  long ldy;
};

// Computes the output columns of tile pairs [begin, end).
namespace avx512 { void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); }
namespace avx2 { void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); }
namespace generic { void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); }

}  // namespace specdec::cpu
