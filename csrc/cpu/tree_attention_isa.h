// Per-ISA entry points of the CPU tree-attention chunk kernel (tree_attention_kernel.inc).
#pragma once

namespace specdec::cpu {

// Partial softmax attention of `rows` queries over one chunk of 64 cache positions; see the kernel.
#define SPECDEC_CHUNK_ATTENTION_DECL                                                                    \
  void chunk_attention(const float* q, int rows, int D, const float* kt, const float* v,               \
                       const unsigned long long* visible, float* partial);
namespace avx512 { SPECDEC_CHUNK_ATTENTION_DECL }
namespace avx2 { SPECDEC_CHUNK_ATTENTION_DECL }
namespace generic { SPECDEC_CHUNK_ATTENTION_DECL }
#undef SPECDEC_CHUNK_ATTENTION_DECL

constexpr int kAttentionChunk = 64;

}  // namespace specdec::cpu
