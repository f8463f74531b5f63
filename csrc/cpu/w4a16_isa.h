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
#define SPECDEC_W4A16_DECL                                      \
  void w4a16_gemm_tiles(const W4A16Args& a, long begin, long end); \
  void w8a16_gemm_tiles(const W4A16Args& a, long begin, long end);  /* 8-bit words, as Int8Args.qpacked */
namespace avx512 { SPECDEC_W4A16_DECL }
namespace avx2 { SPECDEC_W4A16_DECL }
namespace generic { SPECDEC_W4A16_DECL }
#undef SPECDEC_W4A16_DECL

// ---- The int8 dot-product paths, AMX-INT8 tiles or AVX512-VNNI vectors (w4a16_int8.cpp): activations as int8
// digits in panels, output in x's dtype.
enum DtypeCode { kOutFloat, kOutBFloat16, kOutHalf };

struct Int8Activations {
  const void* data;               // x [M, ld] in `dtype`
  long ld;
  int dtype;                      // DtypeCode
  int M, K, group_size;
  int digits, tile_rows;          // int8 digits per value; digit rows (x row * digits + d) per panel block
  int k_step;                     // k per tile multiply: 64, or the group size when it is smaller
};

struct Int8Args {
  const int8_t* panels;           // [blocks][K/k_step][tile_rows][k_step] digits (pack_activations)
  const float* xsum;              // [M, K/G] per-group sums of x
  const float* xscale;            // [M, K/G] 2^(E - 6 - 7 (digits - 1)): the last digit's weight
  int M, K, group_size, digits, tile_rows, k_step;
  const unsigned* qpacked;        // 4-bit: as W4A16Args; 8-bit: [tiles, K/4, 16] words, byte j = k 4 w + j
  const float* scales;            // [tiles, K/G, 16]
  const float* mins;
  int weight_bits;                // 4 or 8
  void* out;                      // [M, ld_out] in out_dtype, N valid columns
  long ld_out, N;
  int out_dtype, out_elem;        // DtypeCode, bytes per element
  bool use_tiles;                 // AMX tile multiplies; else the AVX512-VNNI kernel (bitwise the same)
};

namespace int8_dot {
void pack_activations(const Int8Activations& x, int8_t* panels, float* xsum, float* xscale);
void w4a16_gemm_tiles(const Int8Args& a, long begin, long end);
}  // namespace int8_dot

}  // namespace specdec::cpu
