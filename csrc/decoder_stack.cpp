// The runner's decoder layers in one C++ call: models/llama.py Block.forward, op for op, through the same
// dispatcher entries as torch.ops.specdec.* (so the same kernels, the same bits). From Python each layer pays
// for module calls, views and argument conversion around its nine ops; here it is the ops alone.
#include "decoder_stack.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <string>

namespace specdec {
namespace {

using Tensor = at::Tensor;
using CTensor = const at::Tensor&;

template <class Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((std::string("specdec::") + name).c_str(), "").typed<Sig>();
}

using Gemm = Tensor(CTensor, CTensor, CTensor, CTensor, int64_t, int64_t, int64_t);
using RmsNorm = Tensor(CTensor, CTensor, double);
using AddRmsNorm = std::tuple<Tensor, Tensor>(CTensor, CTensor, CTensor, double);
using SiluAndMul = Tensor(CTensor);
using RopeAndCache = Tensor(CTensor, CTensor, CTensor, CTensor, CTensor, CTensor, Tensor&, Tensor&, CTensor);
using TreeAttention = Tensor(CTensor, CTensor, CTensor, CTensor, const std::optional<Tensor>&, double);

struct Ops {  // the handles, found once
  c10::TypedOperatorHandle<Gemm> w4a16 = op<Gemm>("w4a16_gemm"), w8a16 = op<Gemm>("w8a16_gemm");
  c10::TypedOperatorHandle<RmsNorm> rms_norm = op<RmsNorm>("rms_norm");
  c10::TypedOperatorHandle<AddRmsNorm> add_rms_norm = op<AddRmsNorm>("add_rms_norm");
  c10::TypedOperatorHandle<SiluAndMul> silu_and_mul = op<SiluAndMul>("silu_and_mul");
  c10::TypedOperatorHandle<RopeAndCache> rope_and_cache = op<RopeAndCache>("rope_and_cache");
  c10::TypedOperatorHandle<TreeAttention> tree_attention = op<TreeAttention>("tree_attention");

  static const Ops& get() {
    static const Ops ops;
    return ops;
  }
};

}  // namespace

Tensor PackedLinear::operator()(const Tensor& x) const {
  const Ops& ops = Ops::get();
  return (weight_bits == 8 ? ops.w8a16 : ops.w4a16).call(x, qweight, scales, mins, group_size, out_features, x_digits);
}

DecoderStack::DecoderStack(std::vector<DecoderLayer> layers, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                           double eps)
    : layers_(std::move(layers)), n_heads_(n_heads), n_kv_heads_(n_kv_heads), head_dim_(head_dim), eps_(eps) {
  TORCH_CHECK(!layers_.empty(), "DecoderStack: no layers");
  for (const DecoderLayer& layer : layers_)
    for (const PackedLinear* linear : {&layer.wqkv, &layer.wo, &layer.w_gate_up, &layer.w_down})
      TORCH_CHECK(linear->weight_bits == 4 || linear->weight_bits == 8, "DecoderStack: weight_bits must be 4 or 8");
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> DecoderStack::forward(
    Tensor x, const Tensor& positions, const Tensor& rope_cos, const Tensor& rope_sin, const Tensor& k_cache,
    const Tensor& v_cache, const Tensor& cache_lens, const std::optional<Tensor>& tree_mask,
    const std::vector<int64_t>& capture) const {
  const Ops& ops = Ops::get();
  for (size_t c = 0; c < capture.size(); ++c)
    TORCH_CHECK(capture[c] >= 0 && capture[c] < (int64_t)layers_.size() && (c == 0 || capture[c] > capture[c - 1]),
                "capture must be ascending layer ids in [0, ", layers_.size(), "), got ", capture);
  std::vector<Tensor> captured;
  auto next_capture = capture.begin();
  TORCH_CHECK(positions.dim() == 2, "positions must be [B, T], got ", positions.sizes());
  TORCH_CHECK(k_cache.dim() == 5 && k_cache.size(0) == (int64_t)layers_.size() && v_cache.sizes() == k_cache.sizes(),
              "caches must be [", layers_.size(), " layers, B, S, Hkv, D], got ", k_cache.sizes(), " and ",
              v_cache.sizes());
  const int64_t batch = positions.size(0), t = positions.size(1), dim = n_heads_ * head_dim_;
  const double scale = std::pow(static_cast<double>(head_dim_), -0.5);  // Python's head_dim ** -0.5, bit for bit
  Tensor pending;  // the previous layer's MLP output, added inside this layer's add + RMSNorm
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& layer = layers_[i];
    Tensor h;
    if (pending.defined()) {
      std::tie(x, h) = ops.add_rms_norm.call(x, pending, layer.attn_norm, eps_);
    } else {
      h = ops.rms_norm.call(x, layer.attn_norm, eps_);
    }
    if (next_capture != capture.end() && *next_capture == (int64_t)i) {  // x: the stream entering layer i
      captured.push_back(x);
      ++next_capture;
    }
    const Tensor heads = layer.wqkv(h).view({batch, t, -1, head_dim_});
    const Tensor q = heads.narrow(2, 0, n_heads_), k = heads.narrow(2, n_heads_, n_kv_heads_),
                 v = heads.narrow(2, n_heads_ + n_kv_heads_, n_kv_heads_);
    Tensor layer_k = k_cache.select(0, i), layer_v = v_cache.select(0, i);
    const Tensor rotated = ops.rope_and_cache.call(q, k, v, positions, rope_cos, rope_sin, layer_k, layer_v, cache_lens);
    const Tensor attn = ops.tree_attention.call(rotated, layer_k, layer_v, cache_lens, tree_mask, scale);
    std::tie(x, h) = ops.add_rms_norm.call(x, layer.wo(attn.view({batch * t, dim})), layer.ffn_norm, eps_);
    pending = layer.w_down(ops.silu_and_mul.call(layer.w_gate_up(h)));
  }
  return {x, pending, captured};
}

}  // namespace specdec
