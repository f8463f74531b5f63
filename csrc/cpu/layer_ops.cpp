// CPU kernels of the small ops between a Llama layer's GEMMs: RMSNorm (optionally after the residual add),
// SiLU-and-mul, and RoPE of q/k with the K/V cache write. Each is a few thousand flops per decoded token,
// where torch's chains of generic ops cost tens of microseconds, mostly in dispatch and allocation.
//
// Rows (tokens) are independent and each row takes the same code path whatever the batch, so a token's
// result never depends on the tokens computed with it (bitwise). Work is split over threads only when a
// call is large (prefill): OpenMP's fork/join costs more than a decoding step's whole op.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "layer_rows.h"
#include "specdec/checks.h"

namespace specdec::cpu {
namespace {

// Elements per thread below which a call runs on the calling thread.
constexpr int64_t kElementsPerTask = 32768;

int64_t grain_rows(int64_t row_elements) { return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(row_elements, 1)); }

void check_activation_dtype(const at::Tensor& x, const char* name) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, name,
                    " must be float32, bfloat16 or float16, got ", dtype);
}

// ---------------------------------------------------------------- RMSNorm
// -> (sum, y): sum = x + residual (undefined without a residual), y = RMSNorm(sum or x) * weight.
// float32 runs in place of the inputs; other dtypes round the sum to their dtype first (the sum a caller
// gets back is the one normalised) and compute in float32.
std::tuple<at::Tensor, at::Tensor> norm_rows(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                             double eps) {
  check_activation_dtype(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dim, got a scalar");
  const int64_t n = x.size(-1);
  SPECDEC_CHECK_DIM(weight, 1);
  TORCH_CHECK_VALUE(weight.size(0) == n, "weight must have x's last dim ", n, ", got shape ", weight.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(weight.scalar_type()), "weight must be floating point, got ",
                    weight.scalar_type());
  TORCH_CHECK_VALUE(eps >= 0, "eps must be >= 0, got ", eps);
  SPECDEC_CHECK_SAME_DEVICE(x, weight);
  if (residual.defined()) {
    TORCH_CHECK_VALUE(residual.sizes() == x.sizes(), "residual must have the shape of x ", x.sizes(), ", got ",
                      residual.sizes());
    SPECDEC_CHECK_DTYPE(residual, x.scalar_type());
    SPECDEC_CHECK_SAME_DEVICE(x, residual);
  }
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const bool fp32 = x.scalar_type() == at::kFloat;
  // Outside float32 the sum is rounded to the dtype by torch's add, then normalised as a plain input.
  const at::Tensor sum_out = residual.defined() ? (fp32 ? at::empty_like(x, at::MemoryFormat::Contiguous) : x + residual)
                                                : at::Tensor();
  const at::Tensor src = (residual.defined() && !fp32 ? sum_out : x).to(at::kFloat).contiguous();
  const at::Tensor res = residual.defined() && fp32 ? residual.contiguous() : at::Tensor();
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const int64_t rows = n == 0 ? 0 : src.numel() / n;
  const float* in = src.data_ptr<float>();
  const float* r = res.defined() ? res.data_ptr<float>() : nullptr;
  float* sum = res.defined() ? sum_out.data_ptr<float>() : nullptr;
  float* out = y.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const LayerRows kernel = layer_rows();
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      kernel.rms_norm(in + i * n, r ? r + i * n : nullptr, sum ? sum + i * n : nullptr, wp, out + i * n, n,
                      static_cast<float>(eps));
  });
  return {sum_out, fp32 ? y : y.to(x.scalar_type())};
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return std::get<1>(norm_rows(x, at::Tensor(), weight, eps));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                    const at::Tensor& weight, double eps) {
  return norm_rows(x, residual, weight, eps);
}

// ---------------------------------------------------------------- SiLU-and-mul
// x [..., 2H] = [gate | up] -> silu(gate) * up [..., H].
at::Tensor silu_and_mul_cpu(const at::Tensor& x) {
  check_activation_dtype(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) % 2 == 0, "x must end in an even dim [..., 2H] (gate | up), got shape ",
                    x.sizes());
  const int64_t hidden = x.size(-1) / 2;
  const at::Tensor src = x.to(at::kFloat).contiguous();
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = hidden;
  at::Tensor y = at::empty(shape, x.options().dtype(at::kFloat));
  const int64_t rows = hidden == 0 ? 0 : src.numel() / (2 * hidden);
  const float* in = src.data_ptr<float>();
  float* out = y.data_ptr<float>();
  const LayerRows kernel = layer_rows();
  at::parallel_for(0, rows, grain_rows(2 * hidden), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) kernel.silu_mul(in + 2 * i * hidden, in + (2 * i + 1) * hidden, out + i * hidden, hidden);
  });
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

// ---------------------------------------------------------------- RoPE + cache write
// Rotates the adjacent pairs (x[2i], x[2i + 1]) of one head by the angles whose cos/sin are given (GGUF's
// Llama layout). src and dst may be the same row.
template <class T>
void rotate_pairs(const T* src, T* dst, const float* cos, const float* sin, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float x0 = static_cast<float>(src[2 * i]), x1 = static_cast<float>(src[2 * i + 1]);
    dst[2 * i] = static_cast<T>(x0 * cos[i] - x1 * sin[i]);
    dst[2 * i + 1] = static_cast<T>(x0 * sin[i] + x1 * cos[i]);
  }
}

// The head rows of a [B, S, H, D] tensor with a contiguous head dim: row(b, s, h) points at D elements.
template <class T>
struct HeadRows {
  T* base;
  int64_t stride_b, stride_s, stride_h;
  explicit HeadRows(const at::Tensor& t)
      : base(t.data_ptr<T>()), stride_b(t.stride(0)), stride_s(t.stride(1)), stride_h(t.stride(2)) {}
  T* operator()(int64_t b, int64_t s, int64_t h) const { return base + b * stride_b + s * stride_s + h * stride_h; }
};

void check_heads(const at::Tensor& t, const char* name, int64_t B, int64_t T, int64_t D, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be [B, T, H, D], got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(0) == B && t.size(1) == T && t.size(3) == D, name, " must be [", B, ", ", T, ", H, ", D,
                    "] like q, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ", dtype, " like q, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.stride(3) == 1, name, " must be contiguous in the head dim, got strides ", t.strides());
}

// q [B, T, Hq, D], k/v [B, T, Hkv, D] (any strides but a contiguous head dim), positions int64 [B, T],
// rope_cos/rope_sin float32 [P, D/2]. Writes RoPE(k) and v at cache positions [cache_lens, cache_lens + T)
// of k_cache/v_cache [B, S, Hkv, D]; returns RoPE(q), contiguous.
at::Tensor rope_and_cache_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& positions, const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                              at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& cache_lens) {
  SPECDEC_CHECK_DIM(q, 4);
  check_activation_dtype(q, "q");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  TORCH_CHECK_VALUE(D % 2 == 0, "q's head dim must be even (RoPE rotates pairs), got ", D);
  TORCH_CHECK_VALUE(q.stride(3) == 1, "q must be contiguous in the head dim, got strides ", q.strides());
  check_heads(k, "k", B, T, D, q.scalar_type());
  check_heads(v, "v", B, T, D, q.scalar_type());
  TORCH_CHECK_VALUE(v.size(2) == k.size(2), "v must have k's ", k.size(2), " heads, got shape ", v.sizes());
  const int64_t Hkv = k.size(2);
  for (const at::Tensor* cache : {&k_cache, &v_cache}) {
    const char* name = cache == &k_cache ? "k_cache" : "v_cache";
    TORCH_CHECK_VALUE(cache->dim() == 4 && cache->size(0) == B && cache->size(2) == Hkv && cache->size(3) == D, name,
                      " must be [B, S_max, Hkv, D] = [", B, ", S_max, ", Hkv, ", ", D, "], got shape ", cache->sizes());
    TORCH_CHECK_VALUE(cache->scalar_type() == q.scalar_type(), name, " must be ", q.scalar_type(), " like q, got ",
                      cache->scalar_type());
    TORCH_CHECK_VALUE(cache->stride(3) == 1, name, " must be contiguous in the head dim, got strides ",
                      cache->strides());
    SPECDEC_CHECK_SAME_DEVICE(q, (*cache));
  }
  TORCH_CHECK_VALUE(v_cache.size(1) == k_cache.size(1), "v_cache must have k_cache's ", k_cache.size(1),
                    " positions, got shape ", v_cache.sizes());
  SPECDEC_CHECK_DTYPE(positions, at::kLong);
  TORCH_CHECK_VALUE(positions.dim() == 2 && positions.size(0) == B && positions.size(1) == T,
                    "positions must be [B, T] = [", B, ", ", T, "], got shape ", positions.sizes());
  for (const at::Tensor* table : {&rope_cos, &rope_sin}) {
    const char* name = table == &rope_cos ? "rope_cos" : "rope_sin";
    TORCH_CHECK_VALUE(table->scalar_type() == at::kFloat, name, " must be float32, got ", table->scalar_type());
    TORCH_CHECK_VALUE(table->dim() == 2 && table->size(1) == D / 2, name, " must be [positions, D/2 = ", D / 2,
                      "], got shape ", table->sizes());
    SPECDEC_CHECK_SAME_DEVICE(q, (*table));
  }
  TORCH_CHECK_VALUE(rope_sin.sizes() == rope_cos.sizes(), "rope_sin must have the shape of rope_cos ", rope_cos.sizes(),
                    ", got ", rope_sin.sizes());
  SPECDEC_CHECK_DTYPE(cache_lens, at::kInt);
  TORCH_CHECK_VALUE(cache_lens.dim() == 1 && cache_lens.size(0) == B, "cache_lens must be [B] = [", B, "], got shape ",
                    cache_lens.sizes());
  SPECDEC_CHECK_SAME_DEVICE(q, positions);
  SPECDEC_CHECK_SAME_DEVICE(q, cache_lens);
  const at::Tensor pos = positions.contiguous(), lens = cache_lens.contiguous();
  const at::Tensor cos_table = rope_cos.contiguous(), sin_table = rope_sin.contiguous();
  const int64_t n_positions = rope_cos.size(0), S = k_cache.size(1);
  const int64_t* p = pos.data_ptr<int64_t>();
  const int32_t* len = lens.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(len[b] >= 0 && len[b] + T <= S, "cache overflow in row ", b, ": cache_lens ", len[b], " + T ", T,
                      " > S_max ", S);
    for (int64_t t = 0; t < T; ++t)
      TORCH_CHECK_VALUE(p[b * T + t] >= 0 && p[b * T + t] < n_positions, "positions[", b, ", ", t, "] = ", p[b * T + t],
                        " is outside the RoPE table [0, ", n_positions, ")");
  }

  at::Tensor q_out = at::empty({B, T, Hq, D}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "rope_and_cache", [&] {
    const HeadRows<scalar_t> q_in(q), k_in(k), v_in(v), q_rot(q_out), k_rows(k_cache), v_rows(v_cache);
    const float *cos_base = cos_table.data_ptr<float>(), *sin_base = sin_table.data_ptr<float>();
    at::parallel_for(0, B * T, grain_rows((Hq + 2 * Hkv) * D), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / T, t = i % T, slot = len[b] + t;
        const float *cos = cos_base + p[i] * (D / 2), *sin = sin_base + p[i] * (D / 2);
        for (int64_t h = 0; h < Hq; ++h) rotate_pairs(q_in(b, t, h), q_rot(b, t, h), cos, sin, D / 2);
        for (int64_t h = 0; h < Hkv; ++h) {
          rotate_pairs(k_in(b, t, h), k_rows(b, slot, h), cos, sin, D / 2);
          std::copy(v_in(b, t, h), v_in(b, t, h) + D, v_rows(b, slot, h));
        }
      }
    });
  });
  return q_out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
  m.impl("silu_and_mul", &silu_and_mul_cpu);
  m.impl("rope_and_cache", &rope_and_cache_cpu);
}

}  // namespace specdec::cpu
