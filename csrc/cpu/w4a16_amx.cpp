// The AMX path of the CPU W4A16 GEMM (Sapphire Rapids and later): bf16 tile dot products with
// exact operands, float32 group scaling. Used for every M of every activation dtype when the CPU
// (and the OS) allow AMX, so that a row's arithmetic never depends on the batch.
//
// Operands. A weight tile is dequantized to q itself (0..15, exact in bf16), never to s * q + m, so
// no weight is rounded. Activations become P bf16 pieces whose sum is exactly x (P = 1 for bf16,
// 2 for float16, 3 for float32: 8 significant bits each), so every product x * q is exact too.
// Per row, per group g and 16 output columns:
//   c_g = sum_pieces sum_{k in g} piece[k] * q[k]      (tile dot products, float32 accumulation)
//   y   = fma(xsum_g, m_g, fma(c_g, s_g, y))            (groups ascending, y starts at 0)
// — the per-group-sum identity of DESIGN 3.1 with the rounding only in the float32 sums.
//
// Tiles (8 registers): C0..C3 = 4 weight tiles (64 output columns) x one row block, A = the row
// block's activations for 32 k, B = one weight tile's 32 k in VNNI pairs:
//   A  [rows][32 bf16]  row r = pieces of x rows;  B [16 k-pairs][16 columns][2 bf16];  C [rows][16 f32]
// A row block is `block_rows` x rows, each as P consecutive tile rows (block_rows * P <= 16).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "w4a16_isa.h"

namespace specdec::cpu::amx {
namespace {

constexpr int kTilesPerBlock = 4;

// Per-thread scratch, kept between calls (no fresh pages per call). Compiled outside the AMX region:
// std::vector's code must not be built with AVX-512 and then shared with the portable paths.
struct Scratch {
  std::vector<float> y;  // [M][64]: float32 accumulators of the current 4 tiles
  alignas(64) uint16_t b[kTilesPerBlock * 4][16 * 32];  // dequantized B tiles of one group (G <= 128)
  alignas(64) float c[kTilesPerBlock][16 * 16];         // C tiles stored for the epilogue
};

Scratch& thread_scratch(int M) {
  thread_local Scratch scratch;
  if (scratch.y.size() < static_cast<size_t>(M) * 64) scratch.y.resize(static_cast<size_t>(M) * 64);
  return scratch;
}

}  // namespace
}  // namespace specdec::cpu::amx

#pragma GCC push_options
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16")
namespace specdec::cpu::amx {
namespace {

constexpr int kTileN = 16, kKStep = 32;  // k per tile dot product
constexpr int kPrefetchBytes = 2048;                          // ahead in each weight-tile stream

// ldtilecfg's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};
// Tile registers (the tile macros need literal numbers): tmm0..3 = C, tmm4 = A, tmm5..7 = B.

void configure_tiles(int rows) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t <= 4; ++t) cfg.rows[t] = rows, cfg.bytes_per_row[t] = 64;
  for (int t = 5; t < 8; ++t) cfg.rows[t] = 16, cfg.bytes_per_row[t] = 64;
  _tile_loadconfig(&cfg);
}

// Word (kb, c) of a packed weight tile holds q[c][8 kb .. 8 kb + 7] (nibble i = k 8 kb + i), so one
// 64-byte block is 4 k-pairs of all 16 columns: B rows 4 (kb mod 4) + j, j = 0..3, are its bytes j.
// vpmultishiftqb puts nibble 2j (k even) in the low 5 bits of word 0 and nibble 2j+1 (k odd) in
// those of word 1 of each dword; vpermw maps those 5 bits to bf16(q) (the 5th bit is a neighbour's).
struct Dequantizer {
  __m512i select[4], to_bf16;
  Dequantizer() {
    for (int j = 0; j < 4; ++j) {
      alignas(64) uint8_t ctrl[64];
      for (int byte = 0; byte < 64; ++byte) {
        const int in_qword = byte % 8, dword = in_qword / 4, word = (in_qword % 4) / 2;
        ctrl[byte] = static_cast<uint8_t>(32 * dword + 8 * j + 4 * word);
      }
      select[j] = _mm512_load_si512(ctrl);
    }
    alignas(64) uint16_t table[32];
    for (int i = 0; i < 32; ++i) {
      const float q = static_cast<float>(i % 16);
      uint32_t bits;
      std::memcpy(&bits, &q, 4);
      table[i] = static_cast<uint16_t>(bits >> 16);  // exact: q has at most 4 significant bits
    }
    to_bf16 = _mm512_load_si512(table);
  }
  // One B tile (32 k, 16 columns, 1 KiB) from 4 packed blocks.
  void tile(const unsigned* words, uint16_t* b_tile) const {
    _mm_prefetch(reinterpret_cast<const char*>(words) + kPrefetchBytes, _MM_HINT_T0);
    for (int block = 0; block < 4; ++block) {
      const __m512i w = _mm512_loadu_si512(words + block * kTileN);
      for (int j = 0; j < 4; ++j) {
        const __m512i q = _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(select[j], w), to_bf16);
        _mm512_store_si512(b_tile + (4 * block + j) * 32, q);
      }
    }
  }
};

inline __m512 load_scale(const float* p) { return _mm512_loadu_ps(p); }

void store_row(void* out, int out_dtype, long col, int valid, __m512 v) {
  const __mmask16 mask = valid >= 16 ? 0xffff : static_cast<__mmask16>((1u << valid) - 1);
  if (out_dtype == kOutFloat) {
    _mm512_mask_storeu_ps(static_cast<float*>(out) + col, mask, v);
  } else if (out_dtype == kOutBFloat16) {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + col, mask, (__m256i)_mm512_cvtneps_pbh(v));
  } else {
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + col, mask,
                             _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

}  // namespace

// x rows -> A panels [row_blocks][K/32][tile_rows][32] bf16 pieces (rows past M zero) and the group sums.
void pack_activations(const AmxActivations& x, uint16_t* panels, float* xsum) {
  const int pieces = x.pieces, block_rows = x.block_rows, tile_rows = x.tile_rows, ksteps = x.K / kKStep;
  const int groups = x.K / x.group_size, steps_per_group = x.group_size / kKStep;
  const int row_blocks = (x.M + block_rows - 1) / block_rows;
  for (int m = 0; m < row_blocks * block_rows; ++m) {
    const int blk = m / block_rows, r = m % block_rows;
    uint16_t* row_panel = panels + ((long)blk * ksteps * tile_rows + r * pieces) * 32;
    if (m >= x.M) {
      for (int ks = 0; ks < ksteps; ++ks)
        std::memset(row_panel + (long)ks * tile_rows * 32, 0, pieces * 64);
      continue;
    }
    for (int g = 0; g < groups; ++g) {
      __m512 sum = _mm512_setzero_ps();
      for (int ks = g * steps_per_group; ks < (g + 1) * steps_per_group; ++ks) {
        uint16_t* dst = row_panel + (long)ks * tile_rows * 32;
        const long k = (long)ks * kKStep;
        __m512 lo, hi;  // k .. k+15, k+16 .. k+31 as float32
        if (x.dtype == kOutBFloat16) {
          const uint16_t* src = static_cast<const uint16_t*>(x.data) + m * x.ld + k;
          const __m512i raw = _mm512_loadu_si512(src);
          _mm512_storeu_si512(dst, raw);
          lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)src)), 16));
          hi = _mm512_castsi512_ps(
              _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + 16))), 16));
        } else {
          if (x.dtype == kOutHalf) {
            const uint16_t* src = static_cast<const uint16_t*>(x.data) + m * x.ld + k;
            lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)src));
            hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + 16)));
          } else {
            const float* src = static_cast<const float*>(x.data) + m * x.ld + k;
            lo = _mm512_loadu_ps(src);
            hi = _mm512_loadu_ps(src + 16);
          }
          // Pieces: each the bf16 rounding of what the previous ones left (exact differences).
          __m512 rest_lo = lo, rest_hi = hi;
          for (int p = 0; p < pieces; ++p) {
            const __m512bh piece = _mm512_cvtne2ps_pbh(rest_hi, rest_lo);
            _mm512_storeu_si512(dst + p * 32, (__m512i)piece);
            const __m512i bits = (__m512i)piece;
            const __m512 back_lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(bits)), 16));
            const __m512 back_hi = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bits, 1)), 16));
            rest_lo = _mm512_sub_ps(rest_lo, back_lo);
            rest_hi = _mm512_sub_ps(rest_hi, back_hi);
          }
        }
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
      }
      xsum[(long)m * groups + g] = _mm512_reduce_add_ps(sum);
    }
  }
}

// Output columns of tiles [begin, end) (multiples of 4) for all M rows.
void w4a16_gemm_tiles(const AmxArgs& a, long begin, long end) {
  static const Dequantizer dequant;
  Scratch& scratch = thread_scratch(a.M);
  const int M = a.M, K = a.K, G = a.group_size, groups = K / G, steps_per_group = G / kKStep, ksteps = K / kKStep;
  const int tile_rows = a.tile_rows, block_rows = a.block_rows, pieces = a.pieces;
  const int row_blocks = (M + block_rows - 1) / block_rows;
  const long q_tile = (long)K / 8 * kTileN, s_tile = (long)groups * kTileN, panel = (long)ksteps * tile_rows * 32;
  float* yacc = scratch.y.data();
  configure_tiles(tile_rows);

  for (long tile0 = begin; tile0 < end; tile0 += kTilesPerBlock) {
    for (int g = 0; g < groups; ++g) {
      // Dequantize the 4 tiles' group (G k) once; every row block reuses it.
      for (int t = 0; t < kTilesPerBlock; ++t)
        for (int s = 0; s < steps_per_group; ++s)
          dequant.tile(a.qpacked + (tile0 + t) * q_tile + ((long)g * steps_per_group + s) * 4 * kTileN,
                       scratch.b[t * steps_per_group + s]);
      const float* scales = a.scales + tile0 * s_tile + g * kTileN;
      const float* mins = a.mins + tile0 * s_tile + g * kTileN;
      for (int blk = 0; blk < row_blocks; ++blk) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint16_t* a_panel = a.panels + blk * panel + (long)g * steps_per_group * tile_rows * 32;
        for (int s = 0; s < steps_per_group; ++s) {
          _tile_loadd(4, a_panel + s * tile_rows * 32, 64);
          _tile_loadd(5, scratch.b[0 * steps_per_group + s], 64);
          _tile_dpbf16ps(0, 4, 5);
          _tile_loadd(6, scratch.b[1 * steps_per_group + s], 64);
          _tile_dpbf16ps(1, 4, 6);
          _tile_loadd(7, scratch.b[2 * steps_per_group + s], 64);
          _tile_dpbf16ps(2, 4, 7);
          _tile_loadd(5, scratch.b[3 * steps_per_group + s], 64);
          _tile_dpbf16ps(3, 4, 5);
        }
        _tile_stored(0, scratch.c[0], 64);
        _tile_stored(1, scratch.c[1], 64);
        _tile_stored(2, scratch.c[2], 64);
        _tile_stored(3, scratch.c[3], 64);
        const int rows = M - blk * block_rows < block_rows ? M - blk * block_rows : block_rows;
        for (int r = 0; r < rows; ++r) {
          const int m = blk * block_rows + r;
          const __m512 xs = _mm512_set1_ps(a.xsum[(long)m * groups + g]);
          for (int t = 0; t < kTilesPerBlock; ++t) {
            const float* c_row = scratch.c[t] + r * pieces * kTileN;
            __m512 c = _mm512_loadu_ps(c_row);
            for (int p = 1; p < pieces; ++p) c = _mm512_add_ps(c, _mm512_loadu_ps(c_row + p * kTileN));
            float* y = yacc + (long)m * 64 + t * kTileN;
            const __m512 prev = g == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(y);
            const __m512 out = _mm512_fmadd_ps(xs, load_scale(mins + t * s_tile),
                                               _mm512_fmadd_ps(c, load_scale(scales + t * s_tile), prev));
            _mm512_storeu_ps(y, out);
          }
        }
      }
    }
    // The 4 tiles are done: write their columns in the output dtype.
    for (int m = 0; m < M; ++m)
      for (int t = 0; t < kTilesPerBlock; ++t) {
        const long col = (tile0 + t) * kTileN;
        const long valid = a.N - col;
        if (valid <= 0) break;
        store_row(static_cast<char*>(a.out) + m * a.ld_out * a.out_elem, a.out_dtype, col, valid > 16 ? 16 : (int)valid,
                  _mm512_loadu_ps(yacc + (long)m * 64 + t * kTileN));
      }
  }
  _tile_release();
}

}  // namespace specdec::cpu::amx
#pragma GCC pop_options
