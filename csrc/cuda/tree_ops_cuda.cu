// CUDA backend of the tree ops: tree_attention, tree_verify_greedy, tree_verify_sample and kv_compact.
// Argument checks (specdec/*checks.h, shared with the CPU and Triton backends), dtype dispatch and the
// launches of the kernel templates in tree_attention_kernel.cuh, tree_verify_kernel.cuh and
// kv_compact_kernel.cuh. One translation unit for the four: every .cu costs a minute or two of torch-header
// parsing in `make cuda-check`.
//
// Validation reads cache_lens, the tree or kv_compact's paths on the host: one small device-to-host copy
// per check, the price of a clear error instead of a wrong walk, an overflow or a corrupted cache.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kv_compact_kernel.cuh"
#include "specdec/attention_checks.h"
#include "specdec/kv_checks.h"
#include "specdec/tree_checks.h"
#include "tree_attention_kernel.cuh"
#include "tree_verify_kernel.cuh"

namespace specdec::cuda {
namespace {

static_assert(kMaxNodes == kMaxTreeNodes, "the kernels' shared tree must hold the largest tree the checks allow");

// ---------------------------------------------------------------- tree_attention
template <class T, int D>
void launch_attention(const TreeAttentionParams<T>& params, int64_t row_tiles, int64_t heads, cudaStream_t stream) {
  constexpr int kSmem = 2 * 2 * kAttnChunk * (D + kAttnRowPad) * sizeof(T);  // 2 stages of K and V
  // Past 48 KiB a kernel must opt in to dynamic shared memory (once per process is enough; it is cheap).
  C10_CUDA_CHECK(cudaFuncSetAttribute(tree_attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const dim3 grid(params.splits, row_tiles, heads);
  tree_attention_kernel<T, D><<<grid, kAttnThreads, kSmem, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void run_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& cache_lens,
               const at::Tensor& mask, const AttentionShapes& s, double scale, at::Tensor& out) {
  const int64_t splits = (s.longest + kAttnSplit - 1) / kAttnSplit, heads = s.B * s.Hkv;
  const at::Tensor partial_o = at::empty({heads, splits, s.rows, s.D}, q.options().dtype(at::kFloat));
  const at::Tensor partial_ml = at::empty({heads, splits, s.rows, 2}, q.options().dtype(at::kFloat));
  const TreeAttentionParams<T> params{
      reinterpret_cast<const T*>(q.data_ptr()),
      reinterpret_cast<const T*>(k_cache.data_ptr()),
      reinterpret_cast<const T*>(v_cache.data_ptr()),
      cache_lens.data_ptr<int32_t>(),
      mask.defined() ? reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()) : nullptr,
      partial_o.data_ptr<float>(),
      partial_ml.data_ptr<float>(),
      static_cast<float>(scale * 1.4426950408889634),  // log2(e): the kernel exponentiates with exp2
      static_cast<int>(s.T), static_cast<int>(s.Hq), static_cast<int>(s.Hkv), static_cast<int>(s.group),
      static_cast<int>(s.rows), static_cast<int>(s.S), static_cast<int>(splits), static_cast<int>((s.T + 63) / 64)};
  const int64_t row_tiles = (s.rows + kAttnTileRows - 1) / kAttnTileRows;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (s.D == 64)
    launch_attention<T, 64>(params, row_tiles, heads, stream);
  else
    launch_attention<T, 128>(params, row_tiles, heads, stream);
  tree_attention_merge_kernel<T><<<dim3(s.rows, heads), s.D, 0, stream>>>(
      params.partial_o, params.partial_ml, params.cache_lens, reinterpret_cast<T*>(out.data_ptr()), params.T,
      params.Hq, params.Hkv, params.group, params.rows, params.splits, static_cast<int>(s.D));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

at::Tensor tree_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const at::Tensor& cache_lens, const std::optional<at::Tensor>& tree_mask, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  const AttentionShapes s = check_tree_attention_args(q, k_cache, v_cache, cache_lens, tree_mask);
  // The kernels' own limits: fp16/bf16 MMA tiles of D = 64 or 128, whole caches read with 16-byte loads.
  TORCH_CHECK_VALUE(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
                    "q must be float16 or bfloat16 on CUDA, got ", q.scalar_type());
  TORCH_CHECK_VALUE(s.D == 64 || s.D == 128, "q's head dim must be 64 or 128 on CUDA, got ", s.D);
  SPECDEC_CHECK_CONTIGUOUS(k_cache);
  SPECDEC_CHECK_CONTIGUOUS(v_cache);
  TORCH_CHECK_VALUE(aligned16(k_cache) && aligned16(v_cache), "k_cache and v_cache must start on a 16-byte boundary");
  TORCH_CHECK_VALUE(s.B * s.Hkv <= 65535 && s.S < (int64_t{1} << 31),
                    "B * Hkv must be <= 65535 and S_max < 2^31, got ", s.B * s.Hkv, " and ", s.S);
  at::Tensor qc = q.contiguous();
  if (!aligned16(qc)) qc = qc.clone();
  const at::Tensor mask = tree_mask.has_value() ? tree_mask->contiguous() : at::Tensor();
  const at::Tensor lens = cache_lens.contiguous();
  at::Tensor out = at::empty_like(qc);
  if (s.B == 0 || s.Hq == 0) return out;
  if (q.scalar_type() == at::kHalf)
    run_attention<__half>(qc, k_cache, v_cache, lens, mask, s, scale, out);
  else
    run_attention<__nv_bfloat16>(qc, k_cache, v_cache, lens, mask, s, scale, out);
  return out;
}

// ---------------------------------------------------------------- tree verification

template <class T>
struct Tag {
  using type = T;
};

// f(Tag<float | __half | __nv_bfloat16>) for the logits dtypes the kernels read.
template <class F>
void dispatch_logits(const at::Tensor& logits, F&& f) {
  switch (logits.scalar_type()) {
    case at::kFloat: return f(Tag<float>{});
    case at::kHalf: return f(Tag<__half>{});
    case at::kBFloat16: return f(Tag<__nv_bfloat16>{});
    default:
      TORCH_CHECK_VALUE(false, "logits must be float32, float16 or bfloat16 on CUDA, got ", logits.scalar_type());
  }
}

struct Verdict {
  at::Tensor accept_idx, accept_len, bonus;
  Verdict(int64_t B, int64_t T, const at::TensorOptions& options)
      : accept_idx(at::empty({B, T}, options.dtype(at::kLong))),
        accept_len(at::empty({B}, options.dtype(at::kLong))),
        bonus(at::empty({B}, options.dtype(at::kLong))) {}
  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {accept_idx, accept_len, bonus}; }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_verify_greedy_cuda(const at::Tensor& tokens,
                                                                        const at::Tensor& parents,
                                                                        const at::Tensor& logits) {
  check_tree(tokens, parents);
  check_tree_logits(logits, tokens);
  const c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t B = tokens.size(0), T = tokens.size(1), V = logits.size(2);
  const at::Tensor tok = tokens.contiguous(), par = parents.to(at::kLong).contiguous(), lg = logits.contiguous();
  Verdict out(B, T, tokens.options());
  if (B == 0) return out.tuple();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_logits(lg, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    tree_verify_greedy_kernel<scalar_t><<<B, kVerifyThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(lg.data_ptr()), tok.data_ptr<int64_t>(), par.data_ptr<int64_t>(),
        static_cast<int>(T), V, out.accept_idx.data_ptr<int64_t>(), out.accept_len.data_ptr<int64_t>(),
        out.bonus.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_verify_sample_cuda(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& logits, const at::Tensor& uniforms,
    double temperature, double top_p, int64_t top_k, const std::optional<at::Tensor>& draft_probs) {
  check_tree(tokens, parents);
  check_tree_logits(logits, tokens);
  check_tree_sample_args(tokens, logits, uniforms, temperature, top_p, top_k, draft_probs);
  const c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t B = tokens.size(0), T = tokens.size(1), V = logits.size(2);
  if (B == 0) return Verdict(B, T, tokens.options()).tuple();
  const at::Tensor q = draft_probs.has_value() ? draft_probs->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor tok = tokens.contiguous(), par = parents.to(at::kLong).contiguous(), lg = logits.contiguous();
  const at::Tensor un = uniforms.contiguous();
  const at::Tensor workspace = at::empty({B, V}, logits.options().dtype(at::kFloat));
  Verdict out(B, T, tokens.options());
  const SampleParams params{static_cast<float>(1.0 / temperature), static_cast<float>(top_p), static_cast<int>(
                                                                                                  std::min<int64_t>(top_k, V))};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_logits(lg, [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    tree_verify_sample_kernel<scalar_t><<<B, kVerifyThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(lg.data_ptr()), q.defined() ? q.data_ptr<float>() : nullptr,
        un.data_ptr<float>(), tok.data_ptr<int64_t>(), par.data_ptr<int64_t>(), static_cast<int>(T), V, params,
        workspace.data_ptr<float>(), out.accept_idx.data_ptr<int64_t>(), out.accept_len.data_ptr<int64_t>(),
        out.bonus.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.tuple();
}

// ---------------------------------------------------------------- kv_compact
// The widest access (16, 8, 4, 2 or 1 bytes) that divides an entry and both caches' base addresses.
int vector_bytes(int64_t entry_bytes, const void* k, const void* v) {
  const uintptr_t bits = static_cast<uintptr_t>(entry_bytes) | reinterpret_cast<uintptr_t>(k) |
                         reinterpret_cast<uintptr_t>(v);
  for (int width = 16; width > 1; width /= 2)
    if (bits % width == 0) return width;
  return 1;
}

template <class Vec>
void launch_compact(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& cache_lens,
                    const at::Tensor& accept_idx, const at::Tensor& accept_len, int64_t L, int64_t B, int64_t S,
                    int64_t T, int64_t entry_bytes) {
  const int64_t entry_vecs = entry_bytes / sizeof(Vec);
  const dim3 grid((entry_vecs + kCompactThreads - 1) / kCompactThreads, B, 2 * L);
  kv_compact_kernel<Vec><<<grid, kCompactThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      static_cast<Vec*>(k_cache.data_ptr()), static_cast<Vec*>(v_cache.data_ptr()), cache_lens.data_ptr<int32_t>(),
      accept_idx.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(), static_cast<int>(B), S, static_cast<int>(T),
      entry_vecs);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void kv_compact_cuda(at::Tensor& k_cache, at::Tensor& v_cache, at::Tensor& cache_lens, const at::Tensor& accept_idx,
                     const at::Tensor& accept_len) {
  const c10::cuda::CUDAGuard guard(k_cache.device());
  check_kv_compact_args(k_cache, v_cache, cache_lens, accept_idx, accept_len);  // before anything moves
  const bool stacked = k_cache.dim() == 5;
  const int64_t L = stacked ? k_cache.size(0) : 1, B = k_cache.size(stacked), S = k_cache.size(stacked + 1);
  const int64_t T = accept_idx.size(1);
  TORCH_CHECK_VALUE(L <= 32767 && B <= 65535, "kv_compact on CUDA takes at most 32767 layers and 65535 rows, got L = ",
                    L, ", B = ", B);
  if (B == 0) return;
  const at::Tensor idx = accept_idx.contiguous(), lens = cache_lens.contiguous(), n_acc = accept_len.contiguous();
  const int64_t entry_bytes = k_cache.stride(stacked + 1) * k_cache.element_size();  // one position: H * D
  if (entry_bytes > 0) {
    switch (vector_bytes(entry_bytes, k_cache.data_ptr(), v_cache.data_ptr())) {
      case 16: launch_compact<uint4>(k_cache, v_cache, lens, idx, n_acc, L, B, S, T, entry_bytes); break;
      case 8: launch_compact<uint2>(k_cache, v_cache, lens, idx, n_acc, L, B, S, T, entry_bytes); break;
      case 4: launch_compact<uint32_t>(k_cache, v_cache, lens, idx, n_acc, L, B, S, T, entry_bytes); break;
      case 2: launch_compact<uint16_t>(k_cache, v_cache, lens, idx, n_acc, L, B, S, T, entry_bytes); break;
      default: launch_compact<uint8_t>(k_cache, v_cache, lens, idx, n_acc, L, B, S, T, entry_bytes); break;
    }
  }
  cache_lens.add_(accept_len.to(at::kInt));  // stream-ordered after the moves, which read the old lengths
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("tree_verify_greedy", &tree_verify_greedy_cuda);
  m.impl("tree_verify_sample", &tree_verify_sample_cuda);
  m.impl("kv_compact", &kv_compact_cuda);
}

}  // namespace specdec::cuda
