// The one place where the specdec op schemas live. Backends register kernels for them in their
// own files with TORCH_LIBRARY_IMPL(specdec, <Key>, m); Python fake kernels live in ops.py.
#include <torch/library.h>

TORCH_LIBRARY(specdec, m) {
  // W4A16 GEMM (docs/design.md 3.1). prepack turns the canonical (qweight, scales, mins) into the
  // layout of the backend of qweight's device; gemm consumes only that layout. x_digits: the CPU integer
  // paths (AMX, AVX512-VNNI) take x as that many 7-bit digits per value, a fixed-point window per row and
  // group (error < 2^-(7 x_digits - 1) of the group maximum; the work scales with it); others ignore it.
  m.def("w4a16_prepack(Tensor qweight, Tensor scales, Tensor mins, int group_size) -> Tensor[]");
  m.def(
      "w4a16_gemm(Tensor x, Tensor packed_qweight, Tensor packed_scales, Tensor packed_mins, "
      "int group_size, int out_features, int x_digits=3) -> Tensor");
  // The same with 8-bit weights, qweight uint8 [N, K] (a Q8_0 output head: q + 128, mins -128 scales).
  // CPU with AVX512-VNNI only; quant.W8A16Linear falls back to two 4-bit planes elsewhere.
  m.def("w8a16_prepack(Tensor qweight, Tensor scales, Tensor mins, int group_size) -> Tensor[]");
  m.def(
      "w8a16_gemm(Tensor x, Tensor packed_qweight, Tensor packed_scales, Tensor packed_mins, "
      "int group_size, int out_features, int x_digits=3) -> Tensor");

  // Attention of T new tokens over a static KV cache, under a bit-packed tree mask
  // (None = causal among the new tokens). docs/design.md 3.2, 3.3.
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, "
      "Tensor? tree_mask, float scale) -> Tensor");

  // Fused tree verification (docs/design.md 4.3) -> (accept_idx [B, T], accept_len [B], bonus [B]).
  m.def("tree_verify_greedy(Tensor tokens, Tensor parents, Tensor logits) -> (Tensor, Tensor, Tensor)");
  m.def(
      "tree_verify_sample(Tensor tokens, Tensor parents, Tensor logits, Tensor uniforms, "
      "float temperature, float top_p, int top_k, Tensor? draft_probs) -> (Tensor, Tensor, Tensor)");

  // In place: move the accepted entries to [cache_lens, cache_lens + accept_len), advance cache_lens.
  m.def(
      "kv_compact(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) cache_lens, Tensor accept_idx, "
      "Tensor accept_len) -> ()");

  // The small ops between a Llama layer's GEMMs (the runner, models/llama.py), row by row over x [..., n].
  // RMSNorm: x * weight / sqrt(mean(x^2) + eps); add_rms_norm returns (x + residual, RMSNorm(x + residual)).
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  // x [..., 2H] = [gate | up] -> silu(gate) * up [..., H].
  m.def("silu_and_mul(Tensor x) -> Tensor");
  // RoPE (adjacent pairs) of q [B, T, Hq, D] and k [B, T, Hkv, D] at positions [B, T] from cos/sin tables
  // [P, D/2]; writes RoPE(k) and v into the caches at [cache_lens, cache_lens + T) and returns RoPE(q).
  m.def(
      "rope_and_cache(Tensor q, Tensor k, Tensor v, Tensor positions, Tensor rope_cos, Tensor rope_sin, "
      "Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_lens) -> Tensor");
}

// The Python module _C: importing it registers the ops above; it also reports the CPU path and gives eager
// callers direct entry points to the hot ops (below).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <string>

#include "decoder_stack.h"
#include "specdec/attention_checks.h"
#include "specdec/cpu_isa.h"
#include "specdec/kv_checks.h"
#include "specdec/tree_checks.h"

namespace {

// Released for the call only: arguments and results are converted holding it.
using WithoutGil = pybind11::call_guard<pybind11::gil_scoped_release>;

// _C.direct.<op>(...) calls the op's dispatcher entry typed (unboxed): the same kernels and the same dispatch
// (device, fake tensors) as torch.ops.specdec.<op>, without converting every argument to an IValue and back,
// which costs microseconds a call: the runner makes ~9 calls per layer per decoded token. Sig must be the
// kernels' C++ signature (the dispatcher checks it when the handle is made). Like torch.ops, the call releases
// the GIL: other Python threads (another model decoding, a server's) run meanwhile.
template <class Sig>
struct Direct;

template <class Ret, class... Args>
struct Direct<Ret(Args...)> {
  static void def(pybind11::module_& m, const char* name) {
    const auto op = c10::Dispatcher::singleton().findSchemaOrThrow((std::string("specdec::") + name).c_str(), "")
                        .typed<Ret(Args...)>();
    m.def(name, [op](Args... args) { return op.call(std::forward<Args>(args)...); }, WithoutGil());
  }
};

using Tensor = at::Tensor;
using CTensor = const at::Tensor&;

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", [] { return std::string(specdec::cpu::isa_name(specdec::cpu::chosen_matrix_isa())); },
        "The CPU instruction set the kernels use now (SPECDEC_CPU_ISA overrides the detected one).");
  auto direct = m.def_submodule("direct", "Unboxed eager entry points of the hot specdec ops (see ops.py).");
  Direct<Tensor(CTensor, CTensor, CTensor, CTensor, int64_t, int64_t, int64_t)>::def(direct, "w4a16_gemm");
  Direct<Tensor(CTensor, CTensor, CTensor, CTensor, int64_t, int64_t, int64_t)>::def(direct, "w8a16_gemm");
  Direct<Tensor(CTensor, CTensor, CTensor, CTensor, const std::optional<Tensor>&, double)>::def(direct,
                                                                                                "tree_attention");
  Direct<std::tuple<Tensor, Tensor, Tensor>(CTensor, CTensor, CTensor)>::def(direct, "tree_verify_greedy");
  Direct<void(Tensor&, Tensor&, Tensor&, CTensor, CTensor)>::def(direct, "kv_compact");
  Direct<Tensor(CTensor, CTensor, double)>::def(direct, "rms_norm");
  Direct<std::tuple<Tensor, Tensor>(CTensor, CTensor, CTensor, double)>::def(direct, "add_rms_norm");
  Direct<Tensor(CTensor)>::def(direct, "silu_and_mul");
  Direct<Tensor(CTensor, CTensor, CTensor, CTensor, CTensor, CTensor, Tensor&, Tensor&, CTensor)>::def(
      direct, "rope_and_cache");

  namespace py = pybind11;
  // The tree ops' argument checks alone, for backends outside the dispatcher (triton/checks.py): the same
  // conditions and messages as the CPU and CUDA kernels, ValueError on failure.
  auto checks = m.def_submodule("checks", "Argument checks of the tree ops (specdec/*checks.h), for Triton.");
  checks.def(
      "tree_attention",
      [](CTensor q, CTensor k_cache, CTensor v_cache, CTensor cache_lens, const std::optional<Tensor>& tree_mask) {
        Tensor host_lens;
        specdec::check_tree_attention_args(q, k_cache, v_cache, cache_lens, tree_mask, &host_lens);
        return host_lens;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::arg("tree_mask"),
      "-> cache_lens on the host (the copy the checks read).");
  checks.def("tree", &specdec::check_tree, py::arg("tokens"), py::arg("parents"), "-> parents as int64 on the host.");
  checks.def("tree_logits", &specdec::check_tree_logits, py::arg("logits"), py::arg("tokens"));
  checks.def("token_range", &specdec::check_token_range, py::arg("tokens"), py::arg("vocab"));
  checks.def("tree_sample", &specdec::check_tree_sample_args, py::arg("tokens"), py::arg("logits"), py::arg("uniforms"),
             py::arg("temperature"), py::arg("top_p"), py::arg("top_k"), py::arg("draft_probs"),
             "tree_verify_sample's own arguments, after tree and tree_logits.");
  checks.def("kv_compact", &specdec::check_kv_compact_args, py::arg("k_cache"), py::arg("v_cache"),
             py::arg("cache_lens"), py::arg("accept_idx"), py::arg("accept_len"));

  py::class_<specdec::PackedLinear>(m, "PackedLinear", "A prepacked W4A16/W8A16 layer for DecoderStack.")
      .def(py::init<Tensor, Tensor, Tensor, int64_t, int64_t, int64_t, int64_t>(), py::arg("qweight"),
           py::arg("scales"), py::arg("mins"), py::arg("group_size"), py::arg("out_features"), py::arg("x_digits"),
           py::arg("weight_bits"));
  py::class_<specdec::DecoderLayer>(m, "DecoderLayer", "One Llama decoder layer's norms and layers.")
      .def(py::init<Tensor, Tensor, specdec::PackedLinear, specdec::PackedLinear, specdec::PackedLinear,
                    specdec::PackedLinear>(),
           py::arg("attn_norm"), py::arg("ffn_norm"), py::arg("wqkv"), py::arg("wo"), py::arg("w_gate_up"),
           py::arg("w_down"));
  py::class_<specdec::DecoderStack>(m, "DecoderStack", "The runner's decoder layers as one eager call (models/llama.py).")
      .def(py::init<std::vector<specdec::DecoderLayer>, int64_t, int64_t, int64_t, double>(), py::arg("layers"),
           py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("eps"))
      .def("forward", &specdec::DecoderStack::forward, py::arg("x"), py::arg("positions"), py::arg("rope_cos"),
           py::arg("rope_sin"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::arg("tree_mask"),
           py::arg("capture") = std::vector<int64_t>{}, WithoutGil());
}
