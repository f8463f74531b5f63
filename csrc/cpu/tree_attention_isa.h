// The per-ISA entry points of the CPU tree-attention kernel (tree_attention_kernel.inc) and their
// arguments: raw pointers, no torch types.
//
// Layout: the query rows of one (batch row, KV head) are r = t * group + g (token t, query head
// h * group + g), padded to row_vectors * 16, and sit in vector LANES: every per-head array below is
// [something][row_vectors * 16], so the softmax over positions is lane-wise (no horizontal work).
#pragma once
#include <cstdint>

namespace specdec::cpu {

constexpr long kAttentionChunk = 64;   // positions per chunk: staged, scored and reduced in one softmax step
// A chunk's rows: its cache positions and the new tokens reduced at its positions (siblings share one), at
// most kAttentionChunk - 1 + kMaxTreeNodes (tree_checks.h; asserted in tree_attention.cpp).
constexpr long kChunkRowsMax = kAttentionChunk + 256;
// Positions per task (flash-decoding split); absolute bounds. 128 rather than 256: more, smaller tasks balance
// few threads over few KV heads better (docs/notes.md, "Attention splits of 128 positions").
constexpr long kAttentionSplit = 128;
constexpr int kAttentionRowBlock = 3;  // row vectors (48 rows) per register block

enum class CacheType { kFloat, kBFloat16, kHalf };

// One task: all query rows of KV heads [h0, h0 + heads) of one batch row over positions [begin, end).
struct SplitArgs {
  const void* k;  // position p, head h0 + i at k + p * k_stride + i * k_head_stride elements,
  const void* v;  //   likewise for v; D contiguous elements each
  long k_stride, k_head_stride, v_stride, v_head_stride;
  CacheType type;
  int heads, D, row_vectors, rows;  // rows = T * group <= row_vectors * 16
  const float* qt;                    // [heads][D][row_vectors * 16] queries, pre-scaled, 0 in padding rows
  const unsigned short* new_visible;  // [T][row_vectors]: lane mask of the rows that see new token j
  // [T]: the tree depth of new token j. It sits at cache slot cache_len + j but is reduced as if at
  // position cache_len + depth, where decoding its path one token at a time puts it (vector paths).
  const int* new_depth;
  long cache_len;   // every row sees positions < cache_len; new token j sits at cache_len + j
  long begin, end;  // positions; end <= cache_len + T
  long prefetch_end;  // cache_len + T: rows below it may be prefetched for the next chunk
  float* partial;   // out, per head: o [D][row_vectors * 16], then m and l [row_vectors * 16]
  float* scratch;   // split_scratch_floats(heads, D) floats of the calling thread
  // the AMX path (tree_attention_amx.cpp) reads queries as bf16 tiles and the mask per token instead
  const unsigned short* q_tiles;         // pack_query_tiles of the task's heads
  const uint64_t* token_mask;       // [T][mask_words]: bit j of token t's words = it sees new token j
  int mask_words, group, T;              // rows = T * group
};

inline long partial_floats(int D, int row_vectors) { return (D + 2L) * row_vectors * 16; }
// staged K and V [heads][kChunkRowsMax][D], scores [kChunkRowsMax][row block], o by rows [heads][16][D]
// (T * group <= 16)
inline long split_scratch_floats(int heads, int D) {
  return 2L * heads * kChunkRowsMax * D + kChunkRowsMax * kAttentionRowBlock * 16 + heads * 16L * D;
}

#define SPECDEC_TREE_ATTENTION_DECL                                                \
  void attend_split(const SplitArgs& a);                                           \
  /* acc = acc (+) part, two partial softmaxes of the same rows (same layout). */ \
  void fold_partial(float* acc, const float* part, int D, int row_vectors);
namespace avx512 { SPECDEC_TREE_ATTENTION_DECL }
namespace avx2 { SPECDEC_TREE_ATTENTION_DECL }
namespace generic { SPECDEC_TREE_ATTENTION_DECL }
#undef SPECDEC_TREE_ATTENTION_DECL

// AMX-BF16 tiles (tree_attention_amx.cpp): the same tasks as attend_split; partials of the same size with o
// by rows, [row_vectors * 16][D] (the tiles' layout), then m and l.
namespace amx_bf16 {
void attend_split_tiles(const SplitArgs& a);
void fold_partial_rows(float* acc, const float* part, int D, int row_vectors);
// bf16 elements of the query tiles of `heads` (batch row, KV head) pairs
long query_tile_elements(long heads, int D, int row_vectors);
// q [B, T, Hkv * group, D] contiguous -> scale * q as [B * Hkv][row block][D / 32 steps, rounded up][hi, lo]
// [16 rows][32 dims] bf16, row r = t * group + g of KV head h being query head h * group + g; padding 0.
void pack_query_tiles(const float* q, long B, long T, long Hkv, int group, int D, int row_vectors, float scale,
                      unsigned short* out);
}  // namespace amx_bf16

}  // namespace specdec::cpu
