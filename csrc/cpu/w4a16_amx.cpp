// The bf16-dot-product paths of the CPU W4A16 GEMM: AMX tiles (Sapphire Rapids and later) and an
// AVX512_BF16 vector kernel that computes bit for bit what the tile multiply computes.
//
// Operands. Weights are dequantized to q itself (0..15, exact in bf16), never to s * q + m, so no
// weight is rounded. Activations become P bf16 pieces whose sum is exactly x (P = 1 for bf16, 2 for
// float16, 3 for float32: 8 significant bits each), so every product piece * q is exact.
// Per x row, group g and 16 output columns:
//   c_g = sum_pieces dot_g(piece, q)                 (the tile multiply's float32 sums, see below)
//   y   = fma(xsum_g, m_g, fma(c_g, s_g, y))         (groups ascending, y starts at 0)
// — the per-group-sum identity of DESIGN 3.1 with rounding only in float32 sums.
//
// What a tile multiply computes (Intel SDM, TDPBF16PS; checked bit for bit on this CPU): for each
// 32 k and column, E = the even-k products summed in ascending k from +0, O = the same for odd k,
// each addition rounded to nearest even, then C += E + O. VDPBF16PS adds the odd slot of a pair, then
// the even slot, into one accumulator. So the vector kernel feeds it pairs (k, k + 2) in the order
// that makes one accumulator walk E (and another O) exactly as the tile unit does, then adds
// C += E + O. Both paths therefore give identical bits, and the AMX path may hand small batches to
// the vector kernel (faster there: no tile round trip through memory) without breaking batch
// invariance. (Results below 2^-126 are flushed by both dot instructions but not by the final add:
// they differ only for outputs that small.)
//
// Tiles (8 registers): tmm0..3 = C for 4 weight tiles (64 output columns) x one row block; tmm4/5 = A
// (one row block's pieces for 32 k, alternating by k step); tmm6/7 = B (one weight tile's 32 k):
//   A [rows][32 bf16], rows = pieces of x rows;  B [16 k-pairs][16 columns][2 bf16];  C [rows][16 f32]
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "w4a16_isa.h"

namespace specdec::cpu::amx {
namespace {

constexpr int kTilesPerBlock = 4;
constexpr int kMaxStepsPerGroup = 4;  // G <= 128

// Per-thread scratch, kept between calls (no fresh pages per call). Compiled outside the target
// region: std::vector's code must not be built with AVX-512 and then shared with the portable paths.
struct Scratch {
  std::vector<float> y;  // [M][64]: float32 accumulators of the current 4 tiles
  alignas(64) uint16_t b[kTilesPerBlock * kMaxStepsPerGroup][16 * 32];  // one group's B tiles
  alignas(64) float c[kTilesPerBlock][16 * 16];                          // C tiles for the epilogue
  alignas(64) uint16_t ring[16][16 * 32];                                // streamed B tiles (one row block)
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

constexpr int kTileN = 16, kKStep = 32;  // output columns per weight tile; k per tile multiply
constexpr int kPrefetchBytes = 2048;     // ahead in each weight-tile stream
#ifndef AMX_OFFSET
#define AMX_OFFSET 0
#endif
inline __m512 group_min(__m512 m, __m512 s) {
  return AMX_OFFSET ? _mm512_fnmadd_ps(_mm512_set1_ps(16.f), s, m) : m;
}

// ---------------------------------------------------------------- weights: nibbles -> bf16 q
// Word (kb, c) of a packed weight tile holds q[c][8 kb + i] in nibble i, so a 64-byte block covers
// 8 k of all 16 columns. vpmultishiftqb copies any nibble of a column's word into the low 5 bits of
// a 16-bit lane; vpermw maps those 5 bits to bf16(q) (its table repeats: the 5th bit is a neighbour's).
//   tile B row j (k-pair 4 (kb mod 4) + j): lanes (nibble 2j, nibble 2j + 1)
//   vector E/O operands, quad h (k 4h .. 4h + 3 of the block): E = (nibble 4h + 2, 4h), O = (4h + 3, 4h + 1)
struct Dequantizer {
  __m512i tile_row[4], even[2], odd[2], to_bf16;

  // Control for lanes (low, high) of every column = nibbles (lo, hi) of its word.
  static __m512i select(int lo, int hi) {
    alignas(64) uint8_t ctrl[64];
    for (int byte = 0; byte < 64; ++byte) {
      const int in_qword = byte % 8, dword = in_qword / 4, lane = (in_qword % 4) / 2;
      ctrl[byte] = static_cast<uint8_t>((32 * dword + 4 * (lane == 0 ? lo : hi) - 3 * AMX_OFFSET) & 63);
    }
    return _mm512_load_si512(ctrl);
  }
  Dequantizer() {
    for (int j = 0; j < 4; ++j) tile_row[j] = select(2 * j, 2 * j + 1);
    for (int h = 0; h < 2; ++h) even[h] = select(4 * h + 2, 4 * h), odd[h] = select(4 * h + 3, 4 * h + 1);
    alignas(64) uint16_t table[32];
    for (int i = 0; i < 32; ++i) {
      const float q = static_cast<float>(i % 16);
      uint32_t bits;
      std::memcpy(&bits, &q, 4);
      table[i] = static_cast<uint16_t>(bits >> 16);  // exact: q has at most 4 significant bits
    }
    to_bf16 = _mm512_load_si512(table);
  }
  __m512i lanes(__m512i control, __m512i words) const {
#if AMX_OFFSET
    return _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(control, words), _mm512_set1_epi32(0x00780078),
                                     _mm512_set1_epi32(0x41804180), 0xEA);
#else
    return _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(control, words), to_bf16);
#endif
  }
  // One B tile (32 k of 16 columns, 1 KiB) from 4 packed blocks.
  void tile(const unsigned* words, uint16_t* b_tile) const {
    for (int block = 0; block < 4; ++block) {
      // Weights are read once per call: fetch ahead so the memory stream overlaps the arithmetic.
      _mm_prefetch(reinterpret_cast<const char*>(words + block * kTileN) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i w = _mm512_loadu_si512(words + block * kTileN);
      for (int j = 0; j < 4; ++j) _mm512_store_si512(b_tile + (4 * block + j) * 32, lanes(tile_row[j], w));
    }
  }
};

// ---------------------------------------------------------------- shared group epilogue and output
// y = fma(xsum, m, fma(c, s, y)) with c = the row's pieces summed in order; first group: y = 0.
inline void update_y(float* y, const __m512* piece_c, int pieces, __m512 s, __m512 m, float xsum, bool first) {
  __m512 c = piece_c[0];
  for (int p = 1; p < pieces; ++p) c = _mm512_add_ps(c, piece_c[p]);
  const __m512 prev = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y);
  _mm512_storeu_ps(y, _mm512_fmadd_ps(_mm512_set1_ps(xsum), m, _mm512_fmadd_ps(c, s, prev)));
}

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

// Rows [row0, row0 + rows) of tiles [tile0, tile0 + tiles): float32 accumulators (row stride 64) -> out.
void write_out(const AmxArgs& a, const float* yacc, int row0, int rows, long tile0, int tiles) {
  for (int r = 0; r < rows; ++r) {
    char* out_row = static_cast<char*>(a.out) + (long)(row0 + r) * a.ld_out * a.out_elem;
    for (int t = 0; t < tiles; ++t) {
      const long col = (tile0 + t) * kTileN, valid = a.N - col;
      if (valid <= 0) break;
      store_row(out_row, a.out_dtype, col, valid > 16 ? 16 : (int)valid, _mm512_loadu_ps(yacc + (long)r * 64 + t * kTileN));
    }
  }
}

// ---------------------------------------------------------------- the vector kernel (VDPBF16PS)
// ROWS x rows (ROWS * P row pieces) x T tiles, all groups, C, E and O in registers. The A panel holds
// each row piece's 32 k of a step as 8 E pairs (x[4i + 2], x[4i]) then 8 O pairs (x[4i + 3], x[4i + 1]).
template <int ROWS, int P, int T>
void vector_block(const AmxArgs& a, const Dequantizer& dq, int row0, long tile0, float* yacc) {
  constexpr int R = ROWS * P;
  const int groups = a.K / a.group_size, steps_per_group = a.group_size / kKStep;
  const long q_tile = (long)a.K / 8 * kTileN, s_tile = (long)groups * kTileN;
  const uint16_t* rows_panel = a.panels + (long)row0 * P * 32;  // + (ks * tile_rows + r) * 32
  for (int g = 0; g < groups; ++g) {
    __m512 C[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) C[r][t] = _mm512_setzero_ps();
    for (int ks = g * steps_per_group; ks < (g + 1) * steps_per_group; ++ks) {
      __m512 E[R][T], O[R][T];
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) E[r][t] = O[r][t] = _mm512_setzero_ps();
      const uint32_t* ap[R];
      for (int r = 0; r < R; ++r)
        ap[r] = reinterpret_cast<const uint32_t*>(rows_panel + ((long)ks * a.tile_rows + r) * 32);
      for (int block = 0; block < 4; ++block) {
        __m512i w[T];
        for (int t = 0; t < T; ++t) {
          const unsigned* src = a.qpacked + (tile0 + t) * q_tile + ((long)ks * 4 + block) * kTileN;
          _mm_prefetch(reinterpret_cast<const char*>(src) + kPrefetchBytes, _MM_HINT_T0);
          w[t] = _mm512_loadu_si512(src);
        }
        for (int h = 0; h < 2; ++h) {
          const int pair = 2 * block + h;  // E/O pair index within the step
          for (int t = 0; t < T; ++t) {
            const __m512bh be = (__m512bh)dq.lanes(dq.even[h], w[t]), bo = (__m512bh)dq.lanes(dq.odd[h], w[t]);
            for (int r = 0; r < R; ++r) {
              E[r][t] = _mm512_dpbf16_ps(E[r][t], (__m512bh)_mm512_set1_epi32((int)ap[r][pair]), be);
              O[r][t] = _mm512_dpbf16_ps(O[r][t], (__m512bh)_mm512_set1_epi32((int)ap[r][8 + pair]), bo);
            }
          }
        }
      }
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) C[r][t] = _mm512_add_ps(C[r][t], _mm512_add_ps(E[r][t], O[r][t]));
    }
    for (int t = 0; t < T; ++t) {
      const __m512 s = _mm512_loadu_ps(a.scales + (tile0 + t) * s_tile + g * kTileN);
      const __m512 m = group_min(_mm512_loadu_ps(a.mins + (tile0 + t) * s_tile + g * kTileN), s);
      for (int row = 0; row < ROWS; ++row) {
        __m512 piece_c[P];
        for (int p = 0; p < P; ++p) piece_c[p] = C[row * P + p][t];
        update_y(yacc + (long)row * 64 + t * kTileN, piece_c, P, s, m, a.xsum[(long)(row0 + row) * groups + g], g == 0);
      }
    }
  }
}

// Rows [row0, row0 + rows) in blocks of ROWS, the remainder with fewer; T tiles at a time.
template <int ROWS, int P, int T>
void vector_rows(const AmxArgs& a, const Dequantizer& dq, int row0, int rows, long tile0, float* yacc) {
  int r = 0;
  for (; r + ROWS <= rows; r += ROWS) {
    vector_block<ROWS, P, T>(a, dq, row0 + r, tile0, yacc);
    write_out(a, yacc, row0 + r, ROWS, tile0, T);
  }
  if constexpr (ROWS > 1) {
    if (r < rows) vector_rows<ROWS - 1, P, T>(a, dq, row0 + r, rows - r, tile0, yacc);
  }
}

template <int P>
void vector_tiles(const AmxArgs& a, const Dequantizer& dq, long begin, long end, float* yacc) {
  // Registers: 3 R T accumulators + T weight words + 2 operands <= 32 (R = ROWS * P row pieces). One
  // row piece gets 4 tiles (8 independent dot chains to cover the instruction latency).
  constexpr int kRows = P == 1 ? 4 : P == 2 ? 2 : 1;
  if (P == 1 && a.M == 1) {
    for (long tile0 = begin; tile0 < end; tile0 += 4) vector_rows<1, 1, 4>(a, dq, 0, 1, tile0, yacc);
    return;
  }
  for (long tile0 = begin; tile0 < end; tile0 += 2) vector_rows<kRows, P, 2>(a, dq, 0, a.M, tile0, yacc);
}

// ---------------------------------------------------------------- the tile kernel (TDPBF16PS)
struct alignas(64) TileConfig {  // ldtilecfg's operand, palette 1
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

void configure_tiles(int rows) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 6; ++t) cfg.rows[t] = rows, cfg.bytes_per_row[t] = 64;  // C0..3, A0, A1
  for (int t = 6; t < 8; ++t) cfg.rows[t] = 16, cfg.bytes_per_row[t] = 64;    // B0, B1
  _tile_loadconfig(&cfg);
}

// One k step of the 4 C tiles: A into tmm4 or tmm5 by step parity (the next step's A load need not wait
// for this step's multiplies), B alternating tmm6/tmm7. Tile register numbers must be literals.
#define SPECDEC_AMX_STEP(A, a_tile, b0, b1, b2, b3) \
  _tile_loadd(A, a_tile, 64);                       \
  _tile_loadd(6, b0, 64);                           \
  _tile_dpbf16ps(0, A, 6);                          \
  _tile_loadd(7, b1, 64);                           \
  _tile_dpbf16ps(1, A, 7);                          \
  _tile_loadd(6, b2, 64);                           \
  _tile_dpbf16ps(2, A, 6);                          \
  _tile_loadd(7, b3, 64);                           \
  _tile_dpbf16ps(3, A, 7)

// Tiles [begin, end) in blocks of 4; per (block, group): dequantize the 4 x G/32 B tiles once, then
// every row block multiplies them.
void tile_kernel(const AmxArgs& a, const Dequantizer& dq, Scratch& scratch, long begin, long end) {
  const int M = a.M, K = a.K, groups = K / a.group_size, steps_per_group = a.group_size / kKStep;
  const int tile_rows = a.tile_rows, block_rows = a.block_rows, pieces = a.pieces;
  const int row_blocks = (M + block_rows - 1) / block_rows;
  const long q_tile = (long)K / 8 * kTileN, s_tile = (long)groups * kTileN, panel = (long)K / kKStep * tile_rows * 32;
  float* yacc = scratch.y.data();
  configure_tiles(tile_rows);
  for (long tile0 = begin; tile0 < end; tile0 += kTilesPerBlock) {
    for (int g = 0; g < groups; ++g) {
      const unsigned* words = a.qpacked + tile0 * q_tile + (long)g * steps_per_group * 4 * kTileN;
#ifndef AMX_NODQ
      for (int t = 0; t < kTilesPerBlock; ++t)
        for (int step = 0; step < steps_per_group; ++step)
          dq.tile(words + t * q_tile + step * 4 * kTileN, scratch.b[t * steps_per_group + step]);
#endif
      __m512 s[kTilesPerBlock], m[kTilesPerBlock];
      for (int t = 0; t < kTilesPerBlock; ++t) {
        s[t] = _mm512_loadu_ps(a.scales + (tile0 + t) * s_tile + g * kTileN);
        m[t] = group_min(_mm512_loadu_ps(a.mins + (tile0 + t) * s_tile + g * kTileN), s[t]);
      }
      for (int blk = 0; blk < row_blocks; ++blk) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint16_t* a_group = a.panels + blk * panel + (long)g * steps_per_group * tile_rows * 32;
        for (int step = 0; step < steps_per_group; ++step) {
          const uint16_t* a_tile = a_group + step * tile_rows * 32;
          uint16_t(*b)[16 * 32] = scratch.b + step;  // tile t at b[t * steps_per_group]
          const int spg = steps_per_group;
#ifdef AMX_NOTMUL
          continue;
#endif
          if ((g * steps_per_group + step) % 2 == 0) {
            SPECDEC_AMX_STEP(4, a_tile, b[0], b[spg], b[2 * spg], b[3 * spg]);
          } else {
            SPECDEC_AMX_STEP(5, a_tile, b[0], b[spg], b[2 * spg], b[3 * spg]);
          }
        }
        _tile_stored(0, scratch.c[0], 64);
        _tile_stored(1, scratch.c[1], 64);
        _tile_stored(2, scratch.c[2], 64);
        _tile_stored(3, scratch.c[3], 64);
        const int rows = M - blk * block_rows < block_rows ? M - blk * block_rows : block_rows;
        for (int r = 0; r < rows; ++r) {
          const int row = blk * block_rows + r;
          for (int t = 0; t < kTilesPerBlock; ++t) {
            __m512 piece_c[3];
            for (int p = 0; p < pieces; ++p) piece_c[p] = _mm512_load_ps(scratch.c[t] + (r * pieces + p) * kTileN);
            update_y(yacc + (long)row * 64 + t * kTileN, piece_c, pieces, s[t], m[t], a.xsum[(long)row * groups + g],
                     g == 0);
          }
        }
      }
    }
    write_out(a, yacc, 0, M, tile0, kTilesPerBlock);
  }
  _tile_release();
}
#undef SPECDEC_AMX_STEP

#ifndef AMX_AHEAD
#define AMX_AHEAD 8
#endif
// One row block (M * P <= 16): B tiles are dequantized AMX_AHEAD tile multiplies ahead of their use into
// a ring, so the vector unpacking runs beside the tile unit and no tile load meets stores still in flight.
void tile_kernel_streamed(const AmxArgs& a, const Dequantizer& dq, Scratch& scratch, long begin, long end) {
  constexpr int kAhead = AMX_AHEAD, kRing = 16;
  const int M = a.M, K = a.K, groups = K / a.group_size, spg = a.group_size / kKStep;
  const int tile_rows = a.tile_rows, pieces = a.pieces;
  const long q_tile = (long)K / 8 * kTileN, s_tile = (long)groups * kTileN;
  const long units = (end - begin) / kTilesPerBlock * groups, total = units * spg * kTilesPerBlock;
  float* yacc = scratch.y.data();
  // B tile j: unit j / (4 spg), then step, then tile (the order of the multiplies).
  const auto unpack = [&](long j) {
    if (j >= total) return;
    const long u = j / (spg * kTilesPerBlock);
    const int step = (int)(j / kTilesPerBlock % spg), t = (int)(j % kTilesPerBlock);
    const long tile = begin + u / groups * kTilesPerBlock + t;
    dq.tile(a.qpacked + tile * q_tile + ((long)(u % groups) * spg + step) * 4 * kTileN, scratch.ring[j % kRing]);
  };
  configure_tiles(tile_rows);
  for (long j = 0; j < kAhead; ++j) unpack(j);
  long j = 0;
  for (long u = 0; u < units; ++u) {
    const long tile0 = begin + u / groups * kTilesPerBlock;
    const int g = (int)(u % groups);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int step = 0; step < spg; ++step, j += kTilesPerBlock) {
      const uint16_t* a_tile = a.panels + ((long)g * spg + step) * tile_rows * 32;
      const bool even = (g * spg + step) % 2 == 0;
      if (even) _tile_loadd(4, a_tile, 64); else _tile_loadd(5, a_tile, 64);
      unpack(j + kAhead);
      _tile_loadd(6, scratch.ring[j % kRing], 64);
      if (even) _tile_dpbf16ps(0, 4, 6); else _tile_dpbf16ps(0, 5, 6);
      unpack(j + 1 + kAhead);
      _tile_loadd(7, scratch.ring[(j + 1) % kRing], 64);
      if (even) _tile_dpbf16ps(1, 4, 7); else _tile_dpbf16ps(1, 5, 7);
      unpack(j + 2 + kAhead);
      _tile_loadd(6, scratch.ring[(j + 2) % kRing], 64);
      if (even) _tile_dpbf16ps(2, 4, 6); else _tile_dpbf16ps(2, 5, 6);
      unpack(j + 3 + kAhead);
      _tile_loadd(7, scratch.ring[(j + 3) % kRing], 64);
      if (even) _tile_dpbf16ps(3, 4, 7); else _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, scratch.c[0], 64);
    _tile_stored(1, scratch.c[1], 64);
    _tile_stored(2, scratch.c[2], 64);
    _tile_stored(3, scratch.c[3], 64);
    for (int t = 0; t < kTilesPerBlock; ++t) {
      const __m512 s = _mm512_loadu_ps(a.scales + (tile0 + t) * s_tile + g * kTileN);
      const __m512 m = group_min(_mm512_loadu_ps(a.mins + (tile0 + t) * s_tile + g * kTileN), s);
      for (int r = 0; r < M; ++r) {
        __m512 piece_c[3];
        for (int p = 0; p < pieces; ++p) piece_c[p] = _mm512_load_ps(scratch.c[t] + (r * pieces + p) * kTileN);
        update_y(yacc + (long)r * 64 + t * kTileN, piece_c, pieces, s, m, a.xsum[(long)r * groups + g], g == 0);
      }
    }
    if (g == groups - 1) write_out(a, yacc, 0, M, tile0, kTilesPerBlock);
  }
  _tile_release();
}

}  // namespace

// ---------------------------------------------------------------- entry points
// x rows -> A panels [row_blocks][K/32][tile_rows][32] bf16 pieces (rows past M zero) and the group sums.
void pack_activations(const AmxActivations& x, uint16_t* panels, float* xsum) {
  const int pieces = x.pieces, block_rows = x.block_rows, tile_rows = x.tile_rows, ksteps = x.K / kKStep;
  const int groups = x.K / x.group_size, steps_per_group = x.group_size / kKStep;
  const int row_blocks = (x.M + block_rows - 1) / block_rows;
  // Vector order: word 2i <- 4i + 2, 2i + 1 <- 4i, 16 + 2i <- 4i + 3, 17 + 2i <- 4i + 1 (E then O pairs).
  alignas(64) uint16_t order[32];
  for (int i = 0; i < 8; ++i) {
    order[2 * i] = 4 * i + 2, order[2 * i + 1] = 4 * i;
    order[16 + 2 * i] = 4 * i + 3, order[17 + 2 * i] = 4 * i + 1;
  }
  const __m512i eo_order = _mm512_load_si512(order);
  const auto widen = [](__m256i bf16) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16)); };
  for (int m = 0; m < row_blocks * block_rows; ++m) {
    const int blk = m / block_rows, r = m % block_rows;
    uint16_t* row_panel = panels + ((long)blk * ksteps * tile_rows + r * pieces) * 32;
    if (m >= x.M) {
      for (int ks = 0; ks < ksteps; ++ks) std::memset(row_panel + (long)ks * tile_rows * 32, 0, pieces * 64);
      continue;
    }
    for (int g = 0; g < groups; ++g) {
      __m512 sum = _mm512_setzero_ps();
      for (int ks = g * steps_per_group; ks < (g + 1) * steps_per_group; ++ks) {
        uint16_t* dst = row_panel + (long)ks * tile_rows * 32;
        const long k = (long)ks * kKStep;
        const auto put = [&](int p, __m512i piece) {
          _mm512_storeu_si512(dst + p * 32, x.vector_order ? _mm512_permutexvar_epi16(eo_order, piece) : piece);
        };
        __m512 lo, hi;  // k .. k + 15 and k + 16 .. k + 31 as float32
        if (x.dtype == kOutBFloat16) {
          const uint16_t* src = static_cast<const uint16_t*>(x.data) + m * x.ld + k;
          put(0, _mm512_loadu_si512(src));
          lo = widen(_mm256_loadu_si256((const __m256i*)src));
          hi = widen(_mm256_loadu_si256((const __m256i*)(src + 16)));
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
          // Pieces: each the bf16 rounding of what the previous ones left (the differences are exact).
          __m512 rest_lo = lo, rest_hi = hi;
          for (int p = 0; p < pieces; ++p) {
            const __m512i piece = (__m512i)_mm512_cvtne2ps_pbh(rest_hi, rest_lo);
            put(p, piece);
            rest_lo = _mm512_sub_ps(rest_lo, widen(_mm512_castsi512_si256(piece)));
            rest_hi = _mm512_sub_ps(rest_hi, widen(_mm512_extracti64x4_epi64(piece, 1)));
          }
        }
        sum = _mm512_add_ps(sum, _mm512_add_ps(lo, hi));
      }
      xsum[(long)m * groups + g] = _mm512_reduce_add_ps(sum);
    }
  }
}

void w4a16_gemm_tiles(const AmxArgs& a, long begin, long end) {
  static const Dequantizer dq;
  Scratch& scratch = thread_scratch(a.M);
  if (!a.use_tiles) {
    float* yacc = scratch.y.data();
    if (a.pieces == 1) vector_tiles<1>(a, dq, begin, end, yacc);
    else if (a.pieces == 2) vector_tiles<2>(a, dq, begin, end, yacc);
    else vector_tiles<3>(a, dq, begin, end, yacc);
    return;
  }
#ifndef AMX_NOSTREAM
  if (a.block_rows >= a.M) return tile_kernel_streamed(a, dq, scratch, begin, end);
#endif
  tile_kernel(a, dq, scratch, begin, end);
}

}  // namespace specdec::cpu::amx
#pragma GCC pop_options
