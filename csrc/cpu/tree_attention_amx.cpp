// The AMX-BF16 path of CPU tree attention (Sapphire Rapids and later): both products of a split task,
// S = Q K^T and O = P V, as bf16 tile multiplies with float32 accumulation; the mask and the softmax in
// between on AVX-512 vectors. Same tasks, partials and fold as the vector path (tree_attention.cpp).
//
// Precision. Float32 and float16 operands are split into two bf16 pieces, x = hi + lo + e with
// |e| <= 2^-17 |x| (float16: e = 0), and each product takes three tile passes, hi.hi + hi.lo + lo.hi: the
// dropped terms are ~2^-15 of each product (|S| ~ 10 -> ~3e-4 absolute at worst, 1e-5 typical). bf16 caches
// are exact in one piece (two passes: the pre-scaled queries and the probabilities keep two pieces).
//
// Batch invariance. A tile row (one query row) depends only on its own A row; the passes, steps and their
// order are fixed by the split (absolute positions, keys padded to 32) whatever T is, and keys a row does not
// see have P = 0, adding exact zeros: T chain tokens at once get the bits of the tiles taking them one at a
// time. But not the vector kernel's bits, and a tree node's keys sit at other slots than in its chain, so tile
// sums group them differently. Hence tree_attention.cpp gives tiles long causal calls only (prefill chunks).
//
// Per task, per head (tiles are 16 rows x 64 bytes, 1 KiB):
//   Q tiles [row block][step][piece] [16 rows][32 dims]          (pack_query_tiles, once per call)
//   K tiles [piece][key tile][step] [16 dim pairs][16 keys x 2]  (K^T in VNNI pairs of dims)
//   V tiles [piece][key step][dim tile] [16 key pairs][16 dims x 2]
//   S [32 rows][256] float32 of a pair of row blocks -> P in its place -> O by rows into the partial.
// Dims pad to whole 32-dim steps and keys to a multiple of 32 with zeros. Tile registers: multiply_column.
// Where the time goes and what was tried: docs/notes.md, "Tree attention on CPU".
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "specdec/amx_tile_config.h"
#include "specdec/huge_buffer.h"

#include "tree_attention_isa.h"

namespace specdec::cpu::amx_bf16 {
namespace {

constexpr int kTileElements = 16 * 32;  // bf16 per tile
constexpr int kSplit = static_cast<int>(kAttentionSplit);

inline int step_dims(int D) { return (D + 31) / 32 * 32; }  // D padded to whole 32-dim steps of Q K^T

// Per-thread buffers, kept between calls (huge_buffer.h: placement matters to the tile loads). Compiled
// outside the target region, like every non-kernel function here.
struct Scratch {
  HugeBuffer buffer;
  uint16_t *k, *v;  // K tiles, then V tiles, of `heads` heads, head_elements bf16 per head each
  float* s;         // S of two row blocks, then P in its place; three such (attend_head)
  void reserve(int heads, long head_elements) {
    const size_t tiles = static_cast<size_t>(heads) * head_elements * sizeof(uint16_t);
    char* region = static_cast<char*>(buffer.reserve(3 * 32 * kSplit * sizeof(float) + 2 * tiles));
    s = reinterpret_cast<float*>(region);
    k = reinterpret_cast<uint16_t*>(region + 3 * 32 * kSplit * sizeof(float));
    v = reinterpret_cast<uint16_t*>(region + 3 * 32 * kSplit * sizeof(float) + tiles);
  }
};

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

long query_tile_elements(long heads, int D, int row_vectors) {
  return heads * row_vectors * (step_dims(D) / 32) * 2 * kTileElements;
}

}  // namespace specdec::cpu::amx_bf16

#pragma GCC push_options
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsics as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16")
namespace specdec::cpu::amx_bf16 {
namespace {

// ---------------------------------------------------------------- conversions
// Two vectors (x0 = elements 0..15, x1 = 16..31) -> 32 bf16 hi and lo pieces, in order.
inline void split_pieces(__m512 x0, __m512 x1, __m512i& hi, __m512i& lo) {
  const __m512bh h = _mm512_cvtne2ps_pbh(x1, x0);
  hi = reinterpret_cast<const __m512i&>(h);
  const __m512 h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi)), 16));
  const __m512 h1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hi, 1)), 16));
  const __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0));  // exact differences
  lo = reinterpret_cast<const __m512i&>(l);
}

template <CacheType type>
inline __m512 load16(const void* src, long index) {
  if constexpr (type == CacheType::kFloat) {
    return _mm512_loadu_ps(static_cast<const float*>(src) + index);
  } else if constexpr (type == CacheType::kBFloat16) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(src) + index));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(src) + index)));
  }
}

// r[i] = row i of a 16 x 16 block of 32-bit elements -> r[i] = column i (unpacks, then 128-bit lane moves).
inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  __m512i u[16];  // lane L of u[4k + c] = column 4L + c, rows 4k .. 4k + 3
  for (int k = 0; k < 4; ++k) {
    u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // a 4 x 4 transpose of 128-bit lanes across u[c], u[4 + c], u[8 + c], u[12 + c]
    const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
    const __m512i x2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44),
                  x3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
    r[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xdd);
  }
}

// ---------------------------------------------------------------- staging K and V of one head
// Rows [from, from + count) (below end) of one head, D elements each: a head's rows are strided (the heads of
// a position lie together), and the hardware prefetcher does not follow them.
template <int kBytes>
inline void prefetch_rows(const void* src, long stride, long from, long end, int count, int D) {
  for (long p = from; p < from + count && p < end; ++p)
    for (int byte = 0; byte < D * kBytes; byte += 64)
      _mm_prefetch(static_cast<const char*>(src) + p * stride * kBytes + byte, _MM_HINT_T0);
}

// Positions [first, first + n) of `heads` heads -> K tiles, head_elements apart; keys n .. keys (a multiple
// of 32) and dims D .. (a multiple of 32) are zero. The heads loop inside the key tiles: every position row
// is then read in order across its heads, a stream the hardware prefetcher follows.
template <CacheType type, bool kLow>
void stage_keys(const SplitArgs& a, const void* k, int heads, long first, int n, int keys, long head_elements,
                uint16_t* out) {
  const int D = a.D, steps = step_dims(D) / 32, key_tiles = keys / 16;
  const long piece = static_cast<long>(key_tiles) * steps * kTileElements;
  constexpr int kBytes = type == CacheType::kFloat ? 4 : 2;
  for (int kt = 0; kt < key_tiles; ++kt)
    for (int h = 0; h < heads; ++h) {
      const char* head = static_cast<const char*>(k) + h * a.k_head_stride * kBytes;
      prefetch_rows<kBytes>(head, a.k_stride, first + kt * 16 + 16, first + n, 16, D);
      for (int st = 0; st < steps; ++st) {
        __m512i hi[16], lo[16];
        for (int i = 0; i < 16; ++i) {
          const int p = kt * 16 + i, d = st * 32;
          const __m512 x0 = p < n && d < D ? load16<type>(head, (first + p) * a.k_stride + d) : _mm512_setzero_ps();
          const __m512 x1 =
              p < n && d + 16 < D ? load16<type>(head, (first + p) * a.k_stride + d + 16) : _mm512_setzero_ps();
          split_pieces(x0, x1, hi[i], lo[i]);
        }
        uint16_t* tile = out + h * head_elements + (static_cast<long>(kt) * steps + st) * kTileElements;
        transpose16(hi);
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(tile + i * 32, hi[i]);
        if constexpr (kLow) {
          transpose16(lo);
          for (int i = 0; i < 16; ++i) _mm512_storeu_si512(tile + piece + i * 32, lo[i]);
        }
      }
    }
}

// Positions [first, first + n) of `heads` heads -> V tiles, head_elements apart (row kp of a tile: keys 2 kp
// and 2 kp + 1 interleaved per dim); heads inside the key steps, as for the keys.
template <CacheType type, bool kLow>
void stage_values(const SplitArgs& a, const void* v, int heads, long first, int n, int keys, long head_elements,
                  uint16_t* out) {
  const int D = a.D, dim_tiles = D / 16, key_steps = keys / 32;
  const long piece = static_cast<long>(key_steps) * dim_tiles * kTileElements;
  alignas(64) uint16_t order[32];
  for (int i = 0; i < 16; ++i) order[2 * i] = static_cast<uint16_t>(i), order[2 * i + 1] = static_cast<uint16_t>(16 + i);
  const __m512i interleave = _mm512_load_si512(order);
  constexpr int kBytes = type == CacheType::kFloat ? 4 : 2;
  for (int ks = 0; ks < key_steps; ++ks)
    for (int h = 0; h < heads; ++h) {
      const char* head = static_cast<const char*>(v) + h * a.v_head_stride * kBytes;
      prefetch_rows<kBytes>(head, a.v_stride, first + ks * 32 + 32, first + n, 32, D);
      for (int dt = 0; dt < dim_tiles; ++dt) {
        uint16_t* tile = out + h * head_elements + (static_cast<long>(ks) * dim_tiles + dt) * kTileElements;
        const int d = dt * 16;
        for (int kp = 0; kp < 16; ++kp) {
          const int p = ks * 32 + 2 * kp;
          const __m512 x0 = p < n ? load16<type>(head, (first + p) * a.v_stride + d) : _mm512_setzero_ps();
          const __m512 x1 = p + 1 < n ? load16<type>(head, (first + p + 1) * a.v_stride + d) : _mm512_setzero_ps();
          __m512i hi, lo;
          split_pieces(x0, x1, hi, lo);
          _mm512_storeu_si512(tile + kp * 32, _mm512_permutexvar_epi16(interleave, hi));
          if constexpr (kLow) _mm512_storeu_si512(tile + piece + kp * 32, _mm512_permutexvar_epi16(interleave, lo));
        }
      }
    }
}

// ---------------------------------------------------------------- the tile multiply
// Every tile register: 16 rows of 64 bytes.
void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.bytes_per_row[t] = 64;
  load_tile_config(cfg);
}

// One column tile (16 keys of S, or 16 dims of O) of R = 1 or 2 row blocks, summed over steps:
//   C_r = sum_step A_r(step) B(step),   A_r(step) = a + r * a_block + step * a_step (hi; lo a_piece further),
//   rows a_ld bytes apart;   B(step) = b + step * b_step (hi; lo b_piece further).
// Two row blocks share each B tile (half the B loads, which come from L2). Tiles: tmm0/1 = C_r,
// tmm4/5 = A_0 hi/lo, tmm2/3 = A_1 hi/lo, tmm6/7 = B hi/lo. Per C element the passes run in one fixed
// order, step after step: hi.hi, hi.lo (kLow), lo.hi.
struct Operands {
  const uint16_t* a;
  long a_step, a_piece, a_block, a_ld;
  const uint16_t* b;
  long b_step, b_piece;
};

// hook() runs after each step's multiplies are issued: vector work placed there overlaps them.
template <bool kLow, int R, class Hook>
void multiply_column(const Operands& t, int steps, float* c, long c_block, long ldc, Hook&& hook) {
  _tile_zero(0);
  if constexpr (R == 2) _tile_zero(1);
  for (int st = 0; st < steps; ++st) {
    const uint16_t *a = t.a + st * t.a_step, *b = t.b + st * t.b_step;
    _tile_loadd(4, a, t.a_ld);
    _tile_loadd(5, a + t.a_piece, t.a_ld);
    _tile_loadd(6, b, 64);
    if constexpr (kLow) _tile_loadd(7, b + t.b_piece, 64);
    if constexpr (R == 2) {
      _tile_loadd(2, a + t.a_block, t.a_ld);
      _tile_loadd(3, a + t.a_block + t.a_piece, t.a_ld);
    }
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kLow) _tile_dpbf16ps(0, 4, 7);
    _tile_dpbf16ps(0, 5, 6);
    if constexpr (R == 2) {
      _tile_dpbf16ps(1, 2, 6);
      if constexpr (kLow) _tile_dpbf16ps(1, 2, 7);
      _tile_dpbf16ps(1, 3, 6);
    }
    hook();
  }
  _tile_stored(0, c, ldc);
  if constexpr (R == 2) _tile_stored(1, c + c_block, ldc);
}

// ---------------------------------------------------------------- softmax of the row blocks
// Bit c: key position p0 + c is visible to token t (a cached position, or a new token its mask row names).
inline __mmask16 visible_keys(const SplitArgs& a, int t, long p0) {
  const long j0 = p0 - a.cache_len;
  if (j0 + 16 <= 0) return 0xffff;
  const uint64_t* words = a.token_mask + static_cast<long>(t) * a.mask_words;
  unsigned bits = 0;
  for (int c = 0; c < 16; ++c) {
    const long j = j0 + c;
    const bool seen = j < 0 || (j < a.T && ((words[j / 64] >> (j % 64)) & 1));
    bits |= static_cast<unsigned>(seen) << c;
  }
  return static_cast<__mmask16>(bits);
}

// e^x for x <= 0: 2^n p(r), r = x - n ln2, |r| <= ln2 / 2, degree-5 Taylor polynomial (relative error
// < 2.5e-6, below the 2^-17 of the two bf16 pieces P is stored in); exactly 0 below -87 and at -inf, so
// masked keys carry no mass. NaN stays NaN (the unordered compare keeps its lane): a NaN score makes its row
// NaN, as on the vector path, instead of vanishing as a key of no mass. An inf in q or k splits into bf16
// pieces inf + NaN, so every row that sees it is NaN (the vector path gives a -inf score no mass).
inline __m512 exp_nonpositive(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 120);
  for (const float c : {1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// Probabilities (in [0, 1], x0 = keys 0..15, x1 = 16..31) -> 32 bf16 hi and lo pieces: hi truncated (one
// AND instead of a rounding and its undoing), lo = x - hi rounded; |x - hi - lo| <= 2^-16 x.
inline void split_probabilities(__m512 x0, __m512 x1, __m512i& hi, __m512i& lo) {
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __m512i h0 = _mm512_and_si512(_mm512_castps_si512(x0), top), h1 = _mm512_and_si512(_mm512_castps_si512(x1), top);
  alignas(64) static constexpr uint16_t kHighHalves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                           23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                           45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  hi = _mm512_permutex2var_epi16(h0, _mm512_load_si512(kHighHalves), h1);
  const __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, _mm512_castsi512_ps(h1)),
                                         _mm512_sub_ps(x0, _mm512_castsi512_ps(h0)));
  lo = reinterpret_cast<const __m512i&>(l);
}

// The softmax of a pair of row blocks: S [rows][kSplit] of rows r0.. over positions first .. first + keys
// -> P in its place, and per row m = the max over the keys it sees and l = the sum of its P (float32).
// Done a few units at a time (advance) between the tile steps of other row blocks, so that this AVX-512
// work can run while the tile unit multiplies (a partial overlap: docs/notes.md).
// A unit is one row's max pass, or one pair of key vectors: exp, sum, and bf16 pieces written over the
// 32 keys just read (row layout [hi 32 | lo 32] per 32 keys, the A tiles of O = P V).
class SoftmaxRows {
 public:
  SoftmaxRows(const SplitArgs& a, float* s, int keys, int r0, int rows, float* m, float* l)
      : a_(a), s_(s), m_(m), l_(l), keys_(keys), r0_(r0), rows_(rows) {}
  int units() const { return rows_ * (1 + keys_ / 32); }
  void finish() { advance(units()); }

  void advance(int units) {
    for (; units > 0 && row_ < rows_; --units) {
      float* x = s_ + row_ * kSplit;
      if (pair_ < 0) {
        max_pass(x);
        continue;
      }
      const __m512 p0 = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(x + 32 * pair_), ref_));
      const __m512 p1 = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(x + 32 * pair_ + 16), ref_));
      sum0_ = _mm512_add_ps(sum0_, p0);  // two chains of adds
      sum1_ = _mm512_add_ps(sum1_, p1);
      __m512i hi, lo;
      split_probabilities(p0, p1, hi, lo);
      uint16_t* p = reinterpret_cast<uint16_t*>(x) + 64 * pair_;
      _mm512_storeu_si512(p, hi);
      _mm512_storeu_si512(p + 32, lo);
      if (++pair_ == keys_ / 32) {
        l_[row_] = _mm512_reduce_add_ps(_mm512_add_ps(sum0_, sum1_));
        ++row_, pair_ = -1;
      }
    }
  }

 private:
  // Masks the row's new-token columns in place (-inf where unseen) and takes its max.
  void max_pass(float* x) {
    const int r = r0_ + row_, t = r < a_.rows ? r / a_.group : a_.T - 1;  // padding rows: any finite values
    const long new_from = a_.cache_len - a_.begin;                        // columns from here on may be masked
    const __m512 minus_inf = _mm512_set1_ps(-__builtin_inff());
    __m512 best = minus_inf;
    for (int c = 0; c < keys_ / 16; ++c) {
      __m512 v = _mm512_loadu_ps(x + c * 16);
      if (c * 16 + 16 > new_from) {
        v = _mm512_mask_blend_ps(visible_keys(a_, t, a_.begin + c * 16), minus_inf, v);
        _mm512_storeu_ps(x + c * 16, v);
      }
      best = _mm512_max_ps(best, v);
    }
    const float row_max = _mm512_reduce_max_ps(best);
    m_[row_] = row_max;
    ref_ = _mm512_set1_ps(row_max == -__builtin_inff() ? 0.f : row_max);  // a row that sees nothing: P = 0
    sum0_ = sum1_ = _mm512_setzero_ps();
    pair_ = 0;
  }

  const SplitArgs& a_;
  float *s_, *m_, *l_;
  int keys_, r0_, rows_, row_ = 0, pair_ = -1;  // pair_ -1: the row's max pass is next
  __m512 ref_, sum0_, sum1_;
};

// One head's staged tiles.
struct Staged {
  const uint16_t *k, *v;
  long k_piece, v_piece;
  int keys;
};

// All query rows of one head, in pairs of row blocks (R = 2, the last pair may have one), software-
// pipelined: while the tile unit computes S of pair i + 1 and O of pair i - 1, the vectors take the
// softmax of pair i. S buffers rotate by three. Each row's arithmetic is the same whatever the schedule.
template <bool kLow>
void attend_head(const SplitArgs& a, const Staged& st, const uint16_t* q, Scratch& scratch, float* partial) {
  const int D = a.D, q_steps = step_dims(D) / 32, keys = st.keys, pairs = (a.row_vectors + 1) / 2;
  const long q_block = static_cast<long>(q_steps) * 2 * kTileElements, ldq = a.row_vectors * 16L;
  float *m = partial + D * ldq, *l = m + ldq;
  auto s_of = [&](int pair) { return scratch.s + (pair % 3) * 32L * kSplit; };
  auto blocks = [&](int pair) { return a.row_vectors - 2 * pair < 2 ? 1 : 2; };
  auto scores = [&](int pair, auto&& hook) {  // S = Q K^T, one key tile at a time
    for (int j = 0; j < keys / 16; ++j) {
      const Operands ops{q + 2 * pair * q_block, 2 * kTileElements, kTileElements, q_block, 64,
                         st.k + static_cast<long>(j) * q_steps * kTileElements, kTileElements, st.k_piece};
      if (blocks(pair) == 2)
        multiply_column<kLow, 2>(ops, q_steps, s_of(pair) + j * 16, 16 * kSplit, kSplit * 4, hook);
      else
        multiply_column<kLow, 1>(ops, q_steps, s_of(pair) + j * 16, 16 * kSplit, kSplit * 4, hook);
    }
  };
  auto values = [&](int pair, auto&& hook) {  // O = P V into the partial, one dim tile at a time
    const uint16_t* p = reinterpret_cast<const uint16_t*>(s_of(pair));
    for (int j = 0; j < D / 16; ++j) {
      const Operands ops{p, 64, 32, 32 * kSplit, kSplit * 4, st.v + static_cast<long>(j) * kTileElements,
                         (D / 16) * kTileElements, st.v_piece};
      float* o = partial + 32L * pair * D + j * 16;
      if (blocks(pair) == 2)
        multiply_column<kLow, 2>(ops, keys / 32, o, 16L * D, D * 4L, hook);
      else
        multiply_column<kLow, 1>(ops, keys / 32, o, 16L * D, D * 4L, hook);
    }
  };
  auto no_hook = [] {};
  scores(0, no_hook);
  for (int pair = 0; pair < pairs; ++pair) {
    SoftmaxRows softmax(a, s_of(pair), keys, 32 * pair, 16 * blocks(pair), m + 32 * pair, l + 32 * pair);
    const int steps = (pair + 1 < pairs ? keys / 16 * q_steps : 0) + (pair > 0 ? D / 16 * (keys / 32) : 0);
    const int per_step = steps > 0 ? (softmax.units() + steps - 1) / steps : 0;
    auto hook = [&] { softmax.advance(per_step); };
    if (pair + 1 < pairs) scores(pair + 1, hook);
    if (pair > 0) values(pair - 1, hook);
    softmax.finish();
  }
  values(pairs - 1, no_hook);
}

template <CacheType type>
void attend_split_typed(const SplitArgs& a) {
  constexpr bool kLow = type != CacheType::kBFloat16;  // bf16 K and V are exact in one piece
  constexpr int kElementBytes = type == CacheType::kFloat ? 4 : 2;
  const int D = a.D, q_steps = step_dims(D) / 32;
  const int n = static_cast<int>(a.end - a.begin), keys = (n + 31) / 32 * 32;
  const long part = partial_floats(D, a.row_vectors);
  // Heads staged together, up to ~1 MiB of tiles (reading whole position rows in order; more would spill L2).
  const long head_elements = 2L * kSplit * step_dims(D);
  const int batch = std::max(1, std::min(a.heads, static_cast<int>((1L << 20) / (4 * head_elements))));
  Scratch& scratch = thread_scratch();
  scratch.reserve(batch, head_elements);
  configure_tiles();
  for (int h0 = 0; h0 < a.heads; h0 += batch) {
    const int heads = std::min(batch, a.heads - h0);
    stage_keys<type, kLow>(a, static_cast<const char*>(a.k) + h0 * a.k_head_stride * kElementBytes, heads, a.begin,
                           n, keys, head_elements, scratch.k);
    stage_values<type, kLow>(a, static_cast<const char*>(a.v) + h0 * a.v_head_stride * kElementBytes, heads, a.begin,
                             n, keys, head_elements, scratch.v);
    for (int h = h0; h < h0 + heads; ++h) {
      const Staged st{scratch.k + (h - h0) * head_elements, scratch.v + (h - h0) * head_elements,
                      static_cast<long>(keys / 16) * q_steps * kTileElements,
                      static_cast<long>(keys / 32) * (D / 16) * kTileElements, keys};
      const uint16_t* q = a.q_tiles + static_cast<long>(h) * a.row_vectors * q_steps * 2 * kTileElements;
      attend_head<kLow>(a, st, q, scratch, a.partial + h * part);
    }
  }
  _tile_release();
}

}  // namespace

void attend_split_tiles(const SplitArgs& a) {
  switch (a.type) {
    case CacheType::kFloat: attend_split_typed<CacheType::kFloat>(a); break;
    case CacheType::kBFloat16: attend_split_typed<CacheType::kBFloat16>(a); break;
    case CacheType::kHalf: attend_split_typed<CacheType::kHalf>(a); break;
  }
}

void fold_partial_rows(float* acc, const float* part, int D, int row_vectors) {
  const long ld = row_vectors * 16L;
  float *m_acc = acc + D * ld, *l_acc = m_acc + ld;
  const float *m_part = part + D * ld, *l_part = m_part + ld;
  for (long v = 0; v < ld; v += 16) {
    const __m512 ma = _mm512_loadu_ps(m_acc + v), mp = _mm512_loadu_ps(m_part + v), mn = _mm512_max_ps(ma, mp);
    const __m512 ref = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mn, _mm512_set1_ps(-__builtin_inff()), _CMP_EQ_OQ),
                                            mn, _mm512_setzero_ps());  // rows that saw nothing yet stay 0
    const __m512 wa = exp_nonpositive(_mm512_sub_ps(ma, ref)), wp = exp_nonpositive(_mm512_sub_ps(mp, ref));
    _mm512_storeu_ps(m_acc + v, mn);
    _mm512_storeu_ps(l_acc + v, _mm512_fmadd_ps(_mm512_loadu_ps(l_part + v), wp, _mm512_mul_ps(_mm512_loadu_ps(l_acc + v), wa)));
    alignas(64) float w_acc[16], w_part[16];
    _mm512_store_ps(w_acc, wa);
    _mm512_store_ps(w_part, wp);
    for (int r = 0; r < 16; ++r) {
      float* o = acc + (v + r) * D;
      const float* x = part + (v + r) * D;
      const __m512 a_weight = _mm512_set1_ps(w_acc[r]), p_weight = _mm512_set1_ps(w_part[r]);
      for (int d = 0; d < D; d += 16)
        _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_loadu_ps(x + d), p_weight,
                                                _mm512_mul_ps(_mm512_loadu_ps(o + d), a_weight)));
    }
  }
}

void pack_query_tiles(const float* q, long B, long T, long Hkv, int group, int D, int row_vectors, float scale,
                      uint16_t* out) {
  const int steps = step_dims(D) / 32, rows = static_cast<int>(T) * group;
  const __m512 factor = _mm512_set1_ps(scale);
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < Hkv; ++h)
      for (int rb = 0; rb < row_vectors; ++rb)
        for (int i = 0; i < 16; ++i) {
          const int r = rb * 16 + i;
          const float* row = r < rows ? q + ((b * T + r / group) * Hkv * group + h * group + r % group) * D : nullptr;
          for (int st = 0; st < steps; ++st) {
            const int d = st * 32;
            const __m512 x0 = row != nullptr && d < D ? _mm512_mul_ps(factor, _mm512_loadu_ps(row + d)) : _mm512_setzero_ps();
            const __m512 x1 =
                row != nullptr && d + 16 < D ? _mm512_mul_ps(factor, _mm512_loadu_ps(row + d + 16)) : _mm512_setzero_ps();
            __m512i hi, lo;
            split_pieces(x0, x1, hi, lo);
            uint16_t* tile = out + (((b * Hkv + h) * row_vectors + rb) * steps + st) * 2L * kTileElements;
            _mm512_storeu_si512(tile + i * 32, hi);
            _mm512_storeu_si512(tile + kTileElements + i * 32, lo);
          }
        }
}

}  // namespace specdec::cpu::amx_bf16
#pragma GCC pop_options
