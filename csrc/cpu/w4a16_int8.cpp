// The integer paths of the CPU W4A16 GEMM: AMX-INT8 tiles (Sapphire Rapids and later) and an
// AVX512-VNNI vector kernel. Both compute the same exact integer sums, so they give identical bits and
// the AMX path may hand a batch of few rows to the vector kernel without breaking batch invariance.
//
// Activations as int8 digits. Per row and group g, with E = the binary exponent of max |x| in the group,
//   x[k] ~= sum_{d < D} digit_d[k] * 2^(E - 6 - 7 d),   digit_d in -128..127
// (each digit the truncation of what the previous ones left, the last one rounded and saturated): a
// fixed-point window of 7 D bits below the group's largest value; D = x_digits (1..3, the op's argument; 3
// by default; reference.round_x_digits models it). With D = 3, values at most 13 binades below the group
// maximum are exact in bf16 (10 in float16); others, and float32 values, which carry more bits than the
// window, are off by half a unit of the last digit at most (one where it saturates): 2^-(7 D - 1) of the
// group maximum, 2^-20 for D = 3 (no fourth digit for float32: it would cost time for error far below the
// 4-bit weights'), 2^-13 for D = 2, 2^-6 for D = 1 (8-bit activations, as llama.cpp's Q8 but
// with a power-of-two scale). The integer work scales with D.
// Weights stay q (0..15, exact; 8-bit weights, w8a16_gemm: 0..255). Per row, group and
// 16 output columns:
//   C_d = sum_{k in g} digit_d[k] * q[k]                        (exact int32: |C_d| < 2^22)
//   c   = (C_0 * 128 + C_1) * 128 + ...                          (float32, one rounding per step)
//   y   = fma(xsum_g, m_g, fma(c, s_g * 2^(E - 6 - 7 (D - 1)), y))   (groups ascending, y starts at 0)
// — the per-group-sum identity of docs/design.md 3.1. The sums are exact integers, so their order (tiles,
// vectors, any M) cannot change a bit; rounding happens only in the fixed epilogue above.
//
// Tiles (8 registers): tmm0..3 = C (int32) for 4 weight tiles (64 output columns) x one row block;
// tmm4/5 = A (alternating by k step); tmm6/7 = B. One k step is 64 k (G when G < 64):
//   A [rows][step bytes] int8 digits, row = x row * D + d;  B [step / 4][16 columns x 4 k] uint8 q;
//   C [rows][16] int32.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "specdec/amx_tile_config.h"
#include "w4a16_isa.h"

namespace specdec::cpu::int8_dot {
namespace {

constexpr int kTilesPerBlock = 4;
constexpr int kMaxStepsPerGroup = 2;  // G <= 128, steps of 64 k

// Per-thread scratch, kept between calls (no fresh pages per call). Compiled outside the target
// region: std::vector's code must not be built with AVX-512 and then shared with the portable paths.
// Every buffer starts on a 64-byte line: a tile row or vector split over two lines costs two accesses.
struct Scratch {
  std::vector<float> y_storage;  // M * 64 floats and a line of slack for the alignment of y
  float* y = nullptr;            // [M][64]: float32 accumulators of the current 4 tiles
  alignas(64) int32_t c[kTilesPerBlock * 16 * 16];  // [4][tile rows][16]: one row block's C tiles of a group
  alignas(64) uint8_t b[kTilesPerBlock * kMaxStepsPerGroup][16 * 64];  // one group's B tiles
};

Scratch& thread_scratch(int M) {
  thread_local Scratch scratch;
  if (scratch.y_storage.size() < static_cast<size_t>(M) * 64 + 16) {
    scratch.y_storage.resize(static_cast<size_t>(M) * 64 + 16);
    const auto address = reinterpret_cast<uintptr_t>(scratch.y_storage.data());
    scratch.y = reinterpret_cast<float*>((address + 63) / 64 * 64);
  }
  return scratch;
}

}  // namespace
}  // namespace specdec::cpu::int8_dot

#pragma GCC push_options
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,avx2,fma,f16c,amx-tile,amx-int8")
namespace specdec::cpu::int8_dot {
namespace {

constexpr int kTileN = 16;            // output columns per weight tile

// ---------------------------------------------------------------- weights: nibbles -> uint8 q
// Word (kb, c) of a packed weight tile holds q[c][8 kb + i] in nibble i, so a 64-byte block covers 8 k
// of all 16 columns: two 4-k rows of B (VNNI order: column c's 4 consecutive k in dword c). vpmultishiftqb
// moves nibble 4h + j of each column's word into byte j of its dword; the mask keeps the nibble.
struct Dequantizer {
  __m512i quad[2];
  Dequantizer() {
    for (int h = 0; h < 2; ++h) {
      alignas(64) uint8_t ctrl[64];
      for (int byte = 0; byte < 64; ++byte) {
        const int in_qword = byte % 8, dword = in_qword / 4, j = in_qword % 4;
        ctrl[byte] = static_cast<uint8_t>(32 * dword + 4 * (4 * h + j));
      }
      quad[h] = _mm512_load_si512(ctrl);
    }
  }
  // B row of k 8 kb + 4h .. + 3 from the block's words.
  __m512i row(__m512i words, int h) const {
    return _mm512_and_si512(_mm512_multishift_epi64_epi8(quad[h], words), _mm512_set1_epi8(0x0f));
  }
  // One B tile: `step` k (64 or 32) of 16 columns from step / 8 packed blocks.
  void tile(const unsigned* words, int step, uint8_t* b_tile) const {
    for (int block = 0; block < step / 8; ++block) {
      const __m512i w = _mm512_loadu_si512(words + block * kTileN);
      _mm512_store_si512(b_tile + (2 * block) * 64, row(w, 0));
      _mm512_store_si512(b_tile + (2 * block + 1) * 64, row(w, 1));
    }
  }
};

// The vector kernel's weight sources: B rows (16 columns x 4 consecutive k, uint8) of k 8 kb + 4h .. + 3.
// 4-bit: one 64-byte line of nibble words holds 8 k, unpacked by the Dequantizer.
struct NibbleWeights {
  static constexpr int kWordsPer8K = kTileN;  // u32 words of a tile per 8 k
  const Dequantizer& dq;
  struct Block { __m512i words; };
  static Block load(const unsigned* src) { return {_mm512_loadu_si512(src)}; }
  __m512i row(const Block& b, int h) const { return dq.row(b.words, h); }
};
// 8-bit: a 64-byte line is one B row already (column c's 4 k in dword c).
struct ByteWeights {
  static constexpr int kWordsPer8K = 2 * kTileN;
  struct Block { __m512i rows[2]; };
  static Block load(const unsigned* src) { return {{_mm512_loadu_si512(src), _mm512_loadu_si512(src + kTileN)}}; }
  __m512i row(const Block& b, int h) const { return b.rows[h]; }
};

// ---------------------------------------------------------------- shared epilogue and output
// y = fma(xsum, m, fma(c, s * scale, y)), c = the row's digit sums combined; first group: y = 0.
template <int D>
__attribute__((always_inline)) inline void update_y(float* y, const __m512i* digit_c, __m512 s, __m512 m, float scale,
                                                    float xsum, bool first) {
  __m512 c;
  if constexpr (D == 2) {  // C_0 * 128 + C_1 < 2^30 in int32, then one rounding: the bits of the fma below, 2 FP ops fewer
    c = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(digit_c[0], 7), digit_c[1]));
  } else {
    c = _mm512_cvtepi32_ps(digit_c[0]);  // exact: |C_d| < 2^24
    for (int d = 1; d < D; ++d) c = _mm512_fmadd_ps(c, _mm512_set1_ps(128.f), _mm512_cvtepi32_ps(digit_c[d]));
  }
  const __m512 prev = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y);
  const __m512 out = _mm512_fmadd_ps(c, _mm512_mul_ps(s, _mm512_set1_ps(scale)), prev);
  _mm512_storeu_ps(y, _mm512_fmadd_ps(_mm512_set1_ps(xsum), m, out));
}

// float32 -> bf16 bits rounded to nearest even, NaN -> 0x7fc0 (as c10::BFloat16 converts).
inline __m256i to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(rounded);
}

void store_row(void* out, int out_dtype, long col, int valid, __m512 v) {
  const __mmask16 mask = valid >= 16 ? 0xffff : static_cast<__mmask16>((1u << valid) - 1);
  if (out_dtype == kOutFloat) {
    _mm512_mask_storeu_ps(static_cast<float*>(out) + col, mask, v);
  } else {
    const __m256i half = out_dtype == kOutBFloat16 ? to_bf16(v) : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + col, mask, half);
  }
}

// Rows [row0, row0 + rows) of tiles [tile0, tile0 + tiles): float32 accumulators (row stride 64) -> out.
void write_out(const Int8Args& a, const float* yacc, int row0, int rows, long tile0, int tiles) {
  for (int r = 0; r < rows; ++r) {
    char* out_row = static_cast<char*>(a.out) + (long)(row0 + r) * a.ld_out * a.out_elem;
    for (int t = 0; t < tiles; ++t) {
      const long col = (tile0 + t) * kTileN, valid = a.N - col;
      if (valid <= 0) break;
      store_row(out_row, a.out_dtype, col, valid > 16 ? 16 : (int)valid, _mm512_loadu_ps(yacc + (long)r * 64 + t * kTileN));
    }
  }
}

// ---------------------------------------------------------------- the vector kernel (VPDPBUSD)
// The next tile block's lines (its weight words, scales and mins: three contiguous ranges), fetched into
// L1 (not L2: slower at M = 1) a few per k step while this block computes. Streaming ahead within a tile
// alone leaves its first lines to demand misses, and a tile is short (K = 576: 4.6 KiB of words).
class NextBlockPrefetch {
 public:
  NextBlockPrefetch(const Int8Args& a, long words_per_tile, long next_tile, int tiles, long k_steps) {
    const long groups = a.K / a.group_size;
    base_[0] = reinterpret_cast<const char*>(a.qpacked + next_tile * words_per_tile);
    base_[1] = reinterpret_cast<const char*>(a.scales + next_tile * groups * kTileN);
    base_[2] = reinterpret_cast<const char*>(a.mins + next_tile * groups * kTileN);
    lines_[0] = tiles * words_per_tile * 4 / 64;
    lines_[1] = lines_[2] = (long)tiles * groups * kTileN * 4 / 64;
    per_step_ = (int)((lines_[0] + 2 * lines_[1] + k_steps - 1) / k_steps);
  }
  static NextBlockPrefetch none() { return NextBlockPrefetch(); }
  void issue() {
    for (int i = 0; i < per_step_ && range_ < 3; ++i) {
      _mm_prefetch(base_[range_] + line_ * 64, _MM_HINT_T0);
      if (++line_ == lines_[range_]) line_ = 0, ++range_;
    }
  }

 private:
  NextBlockPrefetch() : range_(3) {}
  const char* base_[3] = {};
  long lines_[3] = {};
  int per_step_ = 0, range_ = 0;
  long line_ = 0;
};

// ROWS x rows (R = ROWS * D digit rows) x T tiles, int32 sums in registers: R T sums, T weight rows and one
// digit broadcast at a time (<= 32 with the Dequantizer's constants). STEP (a.k_step) is a compile-time
// constant so that every digit row's address is the block's base plus an immediate: with a run-time step
// the 9 row offsets of a 3-row block and the 18 sums do not fit the registers (sums spill every 8 k, and an
// idiv per 8 k).
template <int ROWS, int D, int T, int STEP, class Weights>
void vector_block(const Int8Args& a, const Weights& weights, int row0, long tile0, float* yacc, NextBlockPrefetch& next) {
  constexpr int R = ROWS * D;
  const int groups = a.K / a.group_size, steps_per_group = a.group_size / STEP;
  const long q_tile = (long)a.K / 8 * Weights::kWordsPer8K, s_tile = (long)groups * kTileN;
  const long step_bytes = (long)a.tile_rows * STEP;  // one k step of every digit row
  const int8_t* block_digits = a.panels + (long)row0 * D * STEP;
  for (int g = 0; g < groups; ++g) {
    __m512i acc[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_si512();
    for (int ks = g * steps_per_group; ks < (g + 1) * steps_per_group; ++ks) {
      const int8_t* digits = block_digits + ks * step_bytes;  // digit row r, k ks STEP + i at r STEP + i
      for (int in_step = 0; in_step < STEP; in_step += 8) {
        const long kb = ((long)ks * STEP + in_step) / 8;
        next.issue();
        typename Weights::Block w[T];
        for (int t = 0; t < T; ++t) w[t] = Weights::load(a.qpacked + (tile0 + t) * q_tile + kb * Weights::kWordsPer8K);
        for (int h = 0; h < 2; ++h) {
          __m512i q[T];
          for (int t = 0; t < T; ++t) q[t] = weights.row(w[t], h);
          for (int r = 0; r < R; ++r) {
            int32_t quad;  // 4 digits of k 8 kb + 4h ..
            std::memcpy(&quad, digits + r * STEP + in_step + 4 * h, 4);
            const __m512i x4 = _mm512_set1_epi32(quad);
            for (int t = 0; t < T; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], q[t], x4);
          }
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      const __m512 s = _mm512_loadu_ps(a.scales + (tile0 + t) * s_tile + g * kTileN);
      const __m512 m = _mm512_loadu_ps(a.mins + (tile0 + t) * s_tile + g * kTileN);
      for (int row = 0; row < ROWS; ++row) {
        const long rg = (long)(row0 + row) * groups + g;
        __m512i digit_c[D];
        for (int d = 0; d < D; ++d) digit_c[d] = acc[row * D + d][t];
        update_y<D>(yacc + (long)row * 64 + t * kTileN, digit_c, s, m, a.xscale[rg], a.xsum[rg], g == 0);
      }
    }
  }
}

// One row: 4 tiles at a time (4 R independent sums); more rows: blocks of kRows rows x 2 tiles, then 2 + 2
// or 2 or 1. Every pass streams its weights once, so rows share passes: with 3 digits kRows = 3 (a weight
// row feeds 9 sums; 18 accumulators), three rows in one pass rather than 2 + 1; with 1 or 2 digits kRows = 4
// (8 or 16 sums; M = 4 in one pass), and the last 3 or 5 rows go as 3 or 3 + 2, never with a lone row.
// The block sizes were chosen by measurement (docs/notes.md, "The vector (VNNI) kernel").
template <int D, int STEP, class Weights>
void vector_tiles(const Int8Args& a, const Weights& weights, long begin, long end, float* yacc) {
  const long k_steps = a.K / 8, words_per_tile = k_steps * Weights::kWordsPer8K;
  const auto next_block = [&](long tile0, int tiles, int passes) {
    return tile0 + tiles < end ? NextBlockPrefetch(a, words_per_tile, tile0 + tiles, tiles, passes * k_steps)
                               : NextBlockPrefetch::none();
  };
  if (a.M == 1) {
    for (long tile0 = begin; tile0 < end; tile0 += 4) {
      NextBlockPrefetch next = next_block(tile0, 4, 1);
      vector_block<1, D, 4, STEP>(a, weights, 0, tile0, yacc, next);
      write_out(a, yacc, 0, 1, tile0, 4);
    }
    return;
  }
  constexpr int kRows = D == 3 ? 3 : 4;
  for (long tile0 = begin; tile0 < end; tile0 += 2) {
    NextBlockPrefetch next = next_block(tile0, 2, (a.M + kRows - 1) / kRows);
    for (int row = 0; row < a.M;) {
      const int left = a.M - row;
      const auto block = [&](auto rows) {
        vector_block<decltype(rows)::value, D, 2, STEP>(a, weights, row, tile0, yacc, next);
        write_out(a, yacc, row, rows, tile0, 2);
        row += rows;
      };
      if (left >= kRows && !(kRows == 3 && left == 4) && !(kRows == 4 && left == 5))  // no lone last row
        block(std::integral_constant<int, kRows>{});
      else if (left >= 3)  // kRows = 4: 3 rows in one pass, not 2 + 1; 5 rows as 3 + 2
        block(std::integral_constant<int, 3>{});
      else if (left >= 2)
        block(std::integral_constant<int, 2>{});
      else
        block(std::integral_constant<int, 1>{});
    }
  }
}

// ---------------------------------------------------------------- the tile kernel (TDPBSUD)
void configure_tiles(int rows, int step) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 4; ++t) cfg.rows[t] = rows, cfg.bytes_per_row[t] = 64;    // C: 16 int32 columns
  for (int t = 4; t < 6; ++t) cfg.rows[t] = rows, cfg.bytes_per_row[t] = step;  // A: step digits
  for (int t = 6; t < 8; ++t) cfg.rows[t] = step / 4, cfg.bytes_per_row[t] = 64;  // B: step / 4 k quads
  load_tile_config(cfg);
}

// One k step of the 4 C tiles; A in tmm4 or tmm5 by step parity (the next step's A load need not wait for
// this step's multiplies), B alternating tmm6/tmm7. Tile register numbers must be literals.
#define SPECDEC_AMX_STEP(A, a_tile, step, b0, b1, b2, b3) \
  _tile_loadd(A, a_tile, step);                           \
  _tile_loadd(6, b0, 64);                                 \
  _tile_dpbsud(0, A, 6);                                  \
  _tile_loadd(7, b1, 64);                                 \
  _tile_dpbsud(1, A, 7);                                  \
  _tile_loadd(6, b2, 64);                                 \
  _tile_dpbsud(2, A, 6);                                  \
  _tile_loadd(7, b3, 64);                                 \
  _tile_dpbsud(3, A, 7)

// Tiles [begin, end) in blocks of 4; per (block, group): the group's B tiles (4-bit: unpacked once into
// scratch; 8-bit: read in place, the packed bytes are B rows already), then for each row block (tile_rows =
// whole x rows of digit rows) multiply, store C and run that block's epilogue at once: C is still in L1 and
// the next block's tile multiplies overlap this block's vector work. The next tile block streams in meanwhile.
template <int D>
void tile_kernel(const Int8Args& a, const Dequantizer& dq, Scratch& scratch, long begin, long end) {
  const int M = a.M, K = a.K, groups = K / a.group_size, step = a.k_step, steps = a.group_size / step;
  const int tile_rows = a.tile_rows, block_rows = tile_rows / D, row_blocks = (M + block_rows - 1) / block_rows;
  const bool nibbles = a.weight_bits == 4;
  const long words_per_8k = nibbles ? NibbleWeights::kWordsPer8K : ByteWeights::kWordsPer8K;
  const long q_tile = (long)K / 8 * words_per_8k, s_tile = (long)groups * kTileN, panel = (long)K * tile_rows;
  const long c_tile = (long)tile_rows * kTileN;  // int32 per C tile in scratch.c: one row block
  float* yacc = scratch.y;
  int32_t* cbuf = scratch.c;
  configure_tiles(tile_rows, step);
  for (long tile0 = begin; tile0 < end; tile0 += kTilesPerBlock) {
    NextBlockPrefetch next = tile0 + kTilesPerBlock < end
                                 ? NextBlockPrefetch(a, q_tile, tile0 + kTilesPerBlock, kTilesPerBlock, groups)
                                 : NextBlockPrefetch::none();
    for (int g = 0; g < groups; ++g) {
      next.issue();
      const uint8_t* b[kTilesPerBlock][kMaxStepsPerGroup];  // B tile of tile t, k step i of the group
      for (int t = 0; t < kTilesPerBlock; ++t) {
        for (int i = 0; i < steps; ++i) {
          const unsigned* words = a.qpacked + (tile0 + t) * q_tile + ((long)g * a.group_size + i * step) / 8 * words_per_8k;
          if (nibbles) dq.tile(words, step, scratch.b[t * steps + i]);
          b[t][i] = nibbles ? scratch.b[t * steps + i] : reinterpret_cast<const uint8_t*>(words);
        }
      }
      __m512 s[kTilesPerBlock], m[kTilesPerBlock];
      for (int t = 0; t < kTilesPerBlock; ++t) {
        s[t] = _mm512_loadu_ps(a.scales + (tile0 + t) * s_tile + g * kTileN);
        m[t] = _mm512_loadu_ps(a.mins + (tile0 + t) * s_tile + g * kTileN);
      }
      for (int blk = 0; blk < row_blocks; ++blk) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int i = 0; i < steps; ++i) {
          const int8_t* a_tile = a.panels + blk * panel + ((long)g * steps + i) * tile_rows * step;
          if ((g * steps + i) % 2 == 0) {
            SPECDEC_AMX_STEP(4, a_tile, step, b[0][i], b[1][i], b[2][i], b[3][i]);
          } else {
            SPECDEC_AMX_STEP(5, a_tile, step, b[0][i], b[1][i], b[2][i], b[3][i]);
          }
        }
        _tile_stored(0, cbuf, 64);
        _tile_stored(1, cbuf + c_tile, 64);
        _tile_stored(2, cbuf + 2 * c_tile, 64);
        _tile_stored(3, cbuf + 3 * c_tile, 64);
        const int first = blk * block_rows, last = first + block_rows < M ? first + block_rows : M;
        for (int row = first; row < last; ++row) {
          const long rg = (long)row * groups + g;
          const float scale = a.xscale[rg], xs = a.xsum[rg];
          for (int t = 0; t < kTilesPerBlock; ++t) {
            __m512i digit_c[D];
            for (int d = 0; d < D; ++d)
              digit_c[d] = _mm512_load_si512(cbuf + t * c_tile + ((row - first) * D + d) * kTileN);
            update_y<D>(yacc + (long)row * 64 + t * kTileN, digit_c, s[t], m[t], scale, xs, g == 0);
          }
        }
      }
    }
    write_out(a, yacc, 0, M, tile0, kTilesPerBlock);
  }
  _tile_release();
}
#undef SPECDEC_AMX_STEP

// ---------------------------------------------------------------- activations -> digits
// 16 values (float32) of one row and group -> D digit vectors of int8 stored at rows[d].
inline void store_digits(__m512 x, __m512 to_fixed, int digits, int8_t* const* rows) {
  __m512 rest = _mm512_mul_ps(x, to_fixed);  // exact (a power of two): |rest| < 128
  for (int d = 0; d < digits; ++d) {
    const bool last = d == digits - 1;
    // Truncate (the remainder stays exact), except the last digit: nearest, saturated at +-127.
    const __m512i digit = last ? _mm512_cvtps_epi32(rest) : _mm512_cvttps_epi32(rest);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(rows[d]), _mm512_cvtsepi32_epi8(digit));
    if (!last) rest = _mm512_mul_ps(_mm512_sub_ps(rest, _mm512_cvtepi32_ps(digit)), _mm512_set1_ps(128.f));
  }
}

inline float pow2(int e) {  // 2^e for -126 <= e <= 127
  const uint32_t bits = static_cast<uint32_t>(e + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

// ---------------------------------------------------------------- entry points
void pack_activations(const Int8Activations& x, int8_t* panels, float* xsum, float* xscale) {
  const int D = x.digits, tile_rows = x.tile_rows, step = x.k_step, G = x.group_size, groups = x.K / G;
  const long panel = (long)x.K * tile_rows;
  // Digit row i = m D + d lives in block i / tile_rows, row i % tile_rows; k in step k / k_step.
  const auto digit_row = [&](int i) { return panels + (i / tile_rows) * panel + (long)(i % tile_rows) * step; };
  const int padded = (x.M * D + tile_rows - 1) / tile_rows * tile_rows;
  for (int i = x.M * D; i < padded; ++i)  // padding rows of the last block
    for (int ks = 0; ks < x.K / step; ++ks) std::memset(digit_row(i) + (long)ks * tile_rows * step, 0, step);
  alignas(64) float vals[128];
  for (int m = 0; m < x.M; ++m) {
    for (int g = 0; g < groups; ++g) {
      const long k0 = (long)g * G;
      for (int i = 0; i < G; i += 16) {
        __m512 v;
        if (x.dtype == kOutFloat) {
          v = _mm512_loadu_ps(static_cast<const float*>(x.data) + m * x.ld + k0 + i);
        } else {
          const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x.data) + m * x.ld + k0 + i));
          v = x.dtype == kOutHalf ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
        _mm512_store_ps(vals + i, v);
      }
      __m512 sum = _mm512_setzero_ps(), amax = _mm512_setzero_ps();
      for (int i = 0; i < G; i += 16) {
        const __m512 v = _mm512_load_ps(vals + i);
        sum = _mm512_add_ps(sum, v);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
      }
      const float total = _mm512_reduce_add_ps(sum), largest = _mm512_reduce_max_ps(amax);
      uint32_t bits;
      std::memcpy(&bits, &largest, 4);
      const bool finite = total - total == 0.f;  // NaN or an infinity in x reaches the sum
      // E: the binary exponent of the largest magnitude, kept >= -99 so that every scale stays a normal float.
      int exponent = static_cast<int>(bits >> 23) - 127;
      exponent = exponent < -99 ? -99 : exponent;
      xsum[(long)m * groups + g] = total;
      xscale[(long)m * groups + g] = finite ? pow2(exponent - 6 - 7 * (D - 1)) : total - total;  // NaN poisons y
      const __m512 to_fixed = finite ? _mm512_set1_ps(pow2(6 - exponent)) : _mm512_setzero_ps();
      for (int i = 0; i < G; i += 16) {
        const long k = k0 + i, at = (k / step) * tile_rows * step + k % step;
        int8_t* rows[3];
        for (int d = 0; d < D; ++d) rows[d] = digit_row(m * D + d) + at;
        store_digits(_mm512_load_ps(vals + i), to_fixed, D, rows);
      }
    }
  }
}

void w4a16_gemm_tiles(const Int8Args& a, long begin, long end) {
  static const Dequantizer dq;
  Scratch& scratch = thread_scratch(a.M);
  const auto run = [&](auto digits) {
    constexpr int D = decltype(digits)::value;
    if (a.use_tiles) return tile_kernel<D>(a, dq, scratch, begin, end);
    const auto vector = [&](const auto& weights) {  // k steps of 16 (G = 16: 8-bit only), 32 (G = 32) or 64
      using W = std::decay_t<decltype(weights)>;
      if (a.k_step == 16) return vector_tiles<D, 16, W>(a, weights, begin, end, scratch.y);
      a.k_step == 32 ? vector_tiles<D, 32, W>(a, weights, begin, end, scratch.y)
                     : vector_tiles<D, 64, W>(a, weights, begin, end, scratch.y);
    };
    if (a.weight_bits == 8) return vector(ByteWeights{});
    vector(NibbleWeights{dq});
  };
  if (a.digits == 1) return run(std::integral_constant<int, 1>{});
  if (a.digits == 2) return run(std::integral_constant<int, 2>{});
  run(std::integral_constant<int, 3>{});
}

}  // namespace specdec::cpu::int8_dot
#pragma GCC pop_options
