// The per-ISA entry points of the CPU W4A16 kernel (w4a16_isa.cpp) and their shared arguments.
#pragma once

namespace specdec::cpu {

struct W4A16Args {
  const float* x;                 // [M, ldx] float32
  long ldx;                       // K plus padding (rows 4 KiB apart would alias in L1)
  const float* xsum;              // [M, K/G] float32: per-group sums of x
  int M, K, group_size;
  const unsigned* qpacked;        // [tiles, K/8, 16] nibble words
  const float* scales;            // [tiles, K/G, 16]
  const float* mins;              // [tiles, K/G, 16]
  float* y;                       // [M, ldy] float32, ldy = tiles * 16
  long ldy;
};

// Computes the output columns of tiles [begin, end); begin and end are multiples of kTileQuantum.
constexpr long kTileQuantum = 4;  // every ISA's tiles-per-step divides it
namespace avx512 { void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); }
namespace avx2 { void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); }
namespace generic { void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); }

}  // namespace specdec::cpu
