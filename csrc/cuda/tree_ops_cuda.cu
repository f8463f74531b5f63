// CUDA backend of the ops that follow the target forward: tree_verify_greedy, tree_verify_sample and
// kv_compact. Argument checks (shared with the CPU backend), dtype dispatch and launches of
// tree_verify_kernel.cuh and kv_compact_kernel.cuh. One translation unit for the three: each .cu costs
// about a minute of torch-header parsing in `make cuda-check`.
//
// Validation reads the tree (and kv_compact's paths) on the host: one small device-to-host copy per call,
// the price of a clear error instead of a wrong walk or a corrupted cache.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kv_compact_kernel.cuh"
#include "specdec/kv_checks.h"
#include "specdec/tree_checks.h"
#include "tree_verify_kernel.cuh"

namespace specdec::cuda {
namespace {

static_assert(kMaxNodes == kMaxTreeNodes, "the kernels' shared tree must hold the largest tree the checks allow");

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
    default: TORCH_CHECK(false, "logits must be float32, float16 or bfloat16 on CUDA, got ", logits.scalar_type());
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
  const int64_t B = tokens.size(0), T = tokens.size(1), V = logits.size(2);
  TORCH_CHECK(temperature > 0, "temperature must be > 0 (use tree_verify_greedy for 0), got ", temperature);
  TORCH_CHECK(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got ", top_p);
  TORCH_CHECK(top_k >= 0, "top_k must be >= 0, got ", top_k);
  SPECDEC_CHECK_DTYPE(uniforms, at::kFloat);
  TORCH_CHECK(uniforms.dim() == 2 && uniforms.size(0) == B && uniforms.size(1) == T + 1,
              "uniforms must be float32 [B, T + 1] = [", B, ", ", T + 1, "], got ", uniforms.sizes());
  SPECDEC_CHECK_SAME_DEVICE(uniforms, tokens);
  const c10::cuda::CUDAGuard guard(tokens.device());
  at::Tensor q;
  if (draft_probs.has_value()) {
    TORCH_CHECK(draft_probs->sizes() == logits.sizes(), "draft_probs must have the shape of logits ", logits.sizes(),
                ", got ", draft_probs->sizes());
    SPECDEC_CHECK_SAME_DEVICE((*draft_probs), tokens);
    q = draft_probs->to(at::kFloat).contiguous();
  }
  if (B == 0) return Verdict(B, T, tokens.options()).tuple();
  const at::Tensor range = at::stack({tokens.min(), tokens.max()}).cpu();  // p[token] is read: it must exist
  TORCH_CHECK(range[0].item<int64_t>() >= 0 && range[1].item<int64_t>() < V, "tokens must be in [0, V = ", V, ")");
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
  check_kv_compact_args(k_cache, v_cache, cache_lens, accept_idx, accept_len);
  const c10::cuda::CUDAGuard guard(k_cache.device());
  const bool stacked = k_cache.dim() == 5;
  const int64_t L = stacked ? k_cache.size(0) : 1, B = k_cache.size(stacked), S = k_cache.size(stacked + 1);
  const int64_t T = accept_idx.size(1);
  TORCH_CHECK(L <= 32767 && B <= 65535, "kv_compact on CUDA takes at most 32767 layers and 65535 rows, got L = ", L,
              ", B = ", B);
  if (B == 0) return;
  // Every value is checked before anything moves: lens, lengths and paths in one copy to the host.
  const at::Tensor idx = accept_idx.contiguous(), lens = cache_lens.contiguous(), n_acc = accept_len.contiguous();
  const at::Tensor host = at::cat({lens.to(at::kLong), n_acc, idx.flatten()}).cpu();
  const std::vector<int32_t> host_lens(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + B);
  check_accepted_paths(host_lens.data(), host.data_ptr<int64_t>() + 2 * B, host.data_ptr<int64_t>() + B, B, T, S);
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
  m.impl("tree_verify_greedy", &tree_verify_greedy_cuda);
  m.impl("tree_verify_sample", &tree_verify_sample_cuda);
  m.impl("kv_compact", &kv_compact_cuda);
}

}  // namespace specdec::cuda
