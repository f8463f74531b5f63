// The per-ISA entry points of the CPU W4A16 kernel (w4a16_isa.cpp) and their shared arguments.
#pragma once
#include <cstdint>

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

// ---- AMX / AVX512_BF16 (w4a16_amx.cpp): activations as bf16 pieces in panels, output in x's dtype.
enum DtypeCode { kOutFloat, kOutBFloat16, kOutHalf };

struct AmxActivations {
  const void* data;               // x [M, ld] in `dtype`
  long ld;
  int dtype;                      // DtypeCode
  int M, K, group_size;
  int pieces, block_rows, tile_rows;  // bf16 pieces per value; x rows per tile; tile rows = their product
  bool vector_order;              // pairs in the order of the vector kernel (amx::w4a16_gemm_tiles)
};

struct AmxArgs {
  const uint16_t* panels;         // [row_blocks][K/32][tile_rows][32] bf16 pieces (pack_activations)
  const float* xsum;              // [M, K/G]
  int M, K, group_size, pieces, block_rows, tile_rows;
  const unsigned* qpacked;        // as W4A16Args
  const float* scales;
  const float* mins;
  void* out;                      // [M, ld_out] in out_dtype, N valid columns
  long ld_out, N;
  int out_dtype, out_elem;        // DtypeCode, bytes per element
  bool use_tiles;                 // AMX tile multiplies; else the bit-identical AVX512_BF16 vector kernel
};

namespace amx {
void pack_activations(const AmxActivations& x, uint16_t* panels, float* xsum);
void w4a16_gemm_tiles(const AmxArgs& a, long begin, long end);
}  // namespace amx

}  // namespace specdec::cpu
