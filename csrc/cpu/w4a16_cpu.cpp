// CPU backend of w4a16_prepack / w4a16_gemm and w8a16_prepack / w8a16_gemm: argument checks, the prepack
// transforms, the run-time ISA choice and the OpenMP split over output tiles. The arithmetic lives in
// w4a16_kernel.inc (float FMA paths) and w4a16_int8.cpp (int8 dot-product paths), for 4- and 8-bit weights.
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include "specdec/checks.h"
#include "specdec/cpu_isa.h"
#include "w4a16_isa.h"

namespace specdec::cpu {
namespace {

constexpr int64_t kTileN = 16;
// Row padding (floats) of the x and y work buffers: row strides that are multiples of 4 KiB make
// the rows of a register block collide in the same L1 sets.
constexpr int64_t kRowPad = 16;
// Up to this many rows the padding does not pay for the copy it needs (small, latency-bound calls).
constexpr int64_t kFewRows = 8;

int64_t padded_tiles(int64_t n) {
  const int64_t tiles = (n + kTileN - 1) / kTileN;
  return (tiles + kTileQuantum - 1) / kTileQuantum * kTileQuantum;
}

// [N, C] -> [tiles, C, 16]: column-tiles of 16 output rows, zero-padded past N.
at::Tensor to_tiles(const at::Tensor& t, int64_t tiles) {
  const int64_t n = t.size(0);
  at::Tensor padded = at::constant_pad_nd(t, {0, 0, 0, tiles * kTileN - n}, 0);
  return padded.view({tiles, kTileN, t.size(1)}).transpose(1, 2).contiguous();
}

// Per-row, per-group sums of x in ascending k: a fixed order, so a row's sums never depend on M.
at::Tensor group_sums(const at::Tensor& x32, int64_t group_size) {
  const int64_t M = x32.size(0), K = x32.size(1), groups = K / group_size, ldx = x32.stride(0);
  at::Tensor xsum = at::empty({M, groups}, x32.options());
  const float* x = x32.data_ptr<float>();
  float* out = xsum.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      float sum = 0.f;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) sum += x[m * ldx + k];
      out[m * groups + g] = sum;
    }
  return xsum;
}

// qweight's bytes as little-endian int32 words, 4 bytes of a row per word. A fresh copy: contiguous() keeps the
// row stride and storage offset of a one-row view (it counts as contiguous), which view(kInt) refuses.
at::Tensor byte_words(const at::Tensor& qweight) { return qweight.clone(at::MemoryFormat::Contiguous).view(at::kInt); }

std::vector<at::Tensor> w4a16_prepack_cpu(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& mins,
                                          int64_t group_size) {
  check_canonical_w4(qweight, scales, mins, group_size);
  const int64_t tiles = padded_tiles(qweight.size(0));
  const at::Tensor words = byte_words(qweight);  // nibble i of word b is k = 8b + i
  return {to_tiles(words, tiles), to_tiles(scales.to(at::kFloat), tiles), to_tiles(mins.to(at::kFloat), tiles)};
}

int dtype_code(at::ScalarType t) {
  return t == at::kBFloat16 ? kOutBFloat16 : t == at::kHalf ? kOutHalf : kOutFloat;
}

// Up to this many digit rows (x rows times digits) the AMX path runs the VNNI vector kernel: the same
// exact integer sums, so the same bits; faster for few rows, where a tile multiply is mostly idle. The
// crossovers, measured on the runner's shapes: 4-bit up to M = 3 (the vector kernel's 3-row blocks), 8-bit
// (no unpacking in the vector kernel) up to M = 6.
constexpr int64_t kVectorDigitRows4 = 9, kVectorDigitRows8 = 18;

// AMX-INT8 / AVX512-VNNI: x as `digits` int8 digits per value in panels, the result written in
// x's dtype by the kernel.
at::Tensor gemm_int8(const at::Tensor& x_in, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                     const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int weight_bits,
                     int digits, bool tiles_allowed) {
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1), tiles = packed_qweight.size(0);
  const int dtype = dtype_code(x.scalar_type());
  const int k_step = group_size < 64 ? static_cast<int>(group_size) : 64;
  const bool use_tiles = tiles_allowed && M * digits > (weight_bits == 8 ? kVectorDigitRows8 : kVectorDigitRows4);
  // Digit rows (M * digits) in blocks of whole x rows, at most 16 tile rows (15 with 3 digits), the rows spread
  // evenly over the blocks (16 rows: 4 x 4, not 5 + 5 + 5 + 1); the vector kernel: one block.
  const int64_t max_block_rows = 16 / digits, blocks = (M + max_block_rows - 1) / max_block_rows;
  const int tile_rows = static_cast<int>(use_tiles ? (M + blocks - 1) / blocks * digits : M * digits);
  const int64_t row_blocks = (M * digits + tile_rows - 1) / tile_rows, groups = K / group_size;
  at::Tensor panels = at::empty({row_blocks * K * tile_rows}, x.options().dtype(at::kChar));
  at::Tensor sums = at::empty({2, M, groups}, x.options().dtype(at::kFloat));  // xsum, xscale
  at::Tensor out = at::empty({M, out_features}, x.options());
  const Int8Activations acts{x.data_ptr(), x.stride(0), dtype, (int)M, (int)K, (int)group_size, digits, tile_rows,
                            k_step};
  int8_t* panel_data = panels.data_ptr<int8_t>();
  float* xsum = sums.data_ptr<float>();
  float* xscale = xsum + M * groups;
  int8_dot::pack_activations(acts, panel_data, xsum, xscale);
  const Int8Args args{panel_data, xsum, xscale, (int)M, (int)K, (int)group_size, digits, tile_rows, k_step,
                     reinterpret_cast<const unsigned*>(packed_qweight.data_ptr<int32_t>()),
                     packed_scales.data_ptr<float>(), packed_mins.data_ptr<float>(), weight_bits, out.data_ptr(),
                     out.stride(0), out_features, dtype, (int)out.element_size(), use_tiles};
  const int64_t quanta = tiles / kTileQuantum;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = quanta * id / threads * kTileQuantum, end = quanta * (id + 1) / threads * kTileQuantum;
    if (begin < end) int8_dot::w4a16_gemm_tiles(args, begin, end);
  }
  return out;
}

// The checks every CPU GEMM shares; packed_qweight is [tiles, K / values_per_word, 16] (`layout` names it).
void check_packed_gemm(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                       const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int64_t values_per_word,
                       const char* layout) {
  check_group_size(group_size, 32 / static_cast<int>(values_per_word));
  SPECDEC_CHECK_DIM(x, 2);
  const auto x_dtype = x.scalar_type();
  TORCH_CHECK_VALUE(x_dtype == at::kFloat || x_dtype == at::kBFloat16 || x_dtype == at::kHalf,
                    "x must be float32, bfloat16 or float16, got ", x_dtype);
  SPECDEC_CHECK_DIM(packed_qweight, 3);
  SPECDEC_CHECK_DTYPE(packed_qweight, at::kInt);
  SPECDEC_CHECK_DTYPE(packed_scales, at::kFloat);
  SPECDEC_CHECK_DTYPE(packed_mins, at::kFloat);
  SPECDEC_CHECK_CONTIGUOUS(packed_qweight);
  SPECDEC_CHECK_CONTIGUOUS(packed_scales);
  SPECDEC_CHECK_CONTIGUOUS(packed_mins);
  const int64_t tiles = packed_qweight.size(0), K = packed_qweight.size(1) * values_per_word;
  TORCH_CHECK_VALUE(packed_qweight.size(2) == kTileN && tiles % kTileQuantum == 0,
                    "packed_qweight is not in the CPU layout ",
                    layout, ", got ", packed_qweight.sizes());
  SPECDEC_CHECK_SIZE(x, 1, K);
  TORCH_CHECK_VALUE(K % group_size == 0, "K = ", K, " must be a multiple of group_size ", group_size);
  const std::vector<int64_t> s_shape{tiles, K / group_size, kTileN};
  TORCH_CHECK_VALUE(packed_scales.sizes() == s_shape, "packed_scales must have shape ", s_shape, ", got ",
                    packed_scales.sizes());
  TORCH_CHECK_VALUE(packed_mins.sizes() == s_shape, "packed_mins must have shape ", s_shape, ", got ",
                    packed_mins.sizes());
  TORCH_CHECK_VALUE(out_features > (tiles - kTileQuantum) * kTileN && out_features <= tiles * kTileN,
                    "out_features ", out_features, " does not match packed_qweight with ", tiles, " tiles");
  SPECDEC_CHECK_SAME_DEVICE(x, packed_qweight);
}

// The float32 FMA paths (w4a16_kernel.inc): AVX-512, AVX2 and portable.
at::Tensor gemm_fma(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                    const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int weight_bits) {
  const int64_t tiles = packed_qweight.size(0), K = x.size(1), M = x.size(0);
  // Few rows of float32 x are used in place; otherwise a float32 copy with padded rows.
  const bool x_in_place = x.scalar_type() == at::kFloat && x.is_contiguous() && M <= kFewRows;
  const at::Tensor x32 = x_in_place ? x
                                    : at::empty({M, K + kRowPad}, x.options().dtype(at::kFloat))
                                          .narrow(1, 0, K)
                                          .copy_(x);
  // A float32 result without padded columns is written straight into the output.
  const bool y_is_output = x.scalar_type() == at::kFloat && out_features == tiles * kTileN && M <= kFewRows;
  at::Tensor y = at::zeros({M, tiles * kTileN + (y_is_output ? 0 : kRowPad)}, x.options().dtype(at::kFloat));
  const at::Tensor xsum = group_sums(x32, group_size);
  const W4A16Args args{x32.data_ptr<float>(), x32.stride(0), xsum.data_ptr<float>(), (int)M, (int)K, (int)group_size,
                       reinterpret_cast<const unsigned*>(packed_qweight.data_ptr<int32_t>()),
                       packed_scales.data_ptr<float>(), packed_mins.data_ptr<float>(), y.data_ptr<float>(),
                       y.stride(0)};
  const bool bytes = weight_bits == 8;
  const auto run = [&]() {
    switch (chosen_isa()) {
      case Isa::kAvx512: return bytes ? avx512::w8a16_gemm_tiles : avx512::w4a16_gemm_tiles;
      case Isa::kAvx2: return bytes ? avx2::w8a16_gemm_tiles : avx2::w4a16_gemm_tiles;
      default: return bytes ? generic::w8a16_gemm_tiles : generic::w4a16_gemm_tiles;
    }
  }();
  const int64_t quanta = tiles / kTileQuantum;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = quanta * id / threads * kTileQuantum, end = quanta * (id + 1) / threads * kTileQuantum;
    if (begin < end) run(args, begin, end);
  }
  return y_is_output ? y : y.narrow(1, 0, out_features).to(x.scalar_type()).contiguous();
}

// The integer paths where the CPU has them, else the FMA paths.
at::Tensor gemm_cpu(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                    const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int weight_bits,
                    int64_t x_digits) {
  check_x_digits(x_digits);
  if (x.size(0) == 0) return at::empty({0, out_features}, x.options());
  const Isa isa = chosen_matrix_isa();
  if (isa == Isa::kAmx || isa == Isa::kAvx512Vnni)
    return gemm_int8(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, weight_bits,
                     static_cast<int>(x_digits), isa == Isa::kAmx);
  return gemm_fma(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, weight_bits);
}

at::Tensor w4a16_gemm_cpu(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                          const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int64_t x_digits) {
  check_packed_gemm(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, 8,
                    "[tiles, K/8, 16] (did you call w4a16_prepack on CPU?)");
  return gemm_cpu(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, 4, x_digits);
}

// 8-bit weights: word (w, c) of a tile = q[c][4w .. 4w + 3], one byte each (VNNI order: no unpacking).
std::vector<at::Tensor> w8a16_prepack_cpu(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& mins,
                                          int64_t group_size) {
  check_canonical_quantized(qweight, scales, mins, group_size, 1);
  const int64_t tiles = padded_tiles(qweight.size(0));
  const at::Tensor words = byte_words(qweight);  // byte j of word w is k 4w + j
  return {to_tiles(words, tiles), to_tiles(scales.to(at::kFloat), tiles), to_tiles(mins.to(at::kFloat), tiles)};
}

at::Tensor w8a16_gemm_cpu(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                          const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int64_t x_digits) {
  check_packed_gemm(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, 4,
                    "[tiles, K/4, 16] (did you call w8a16_prepack on CPU?)");
  return gemm_cpu(x, packed_qweight, packed_scales, packed_mins, group_size, out_features, 8, x_digits);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("w4a16_prepack", &w4a16_prepack_cpu);
  m.impl("w4a16_gemm", &w4a16_gemm_cpu);
  m.impl("w8a16_prepack", &w8a16_prepack_cpu);
  m.impl("w8a16_gemm", &w8a16_gemm_cpu);
}

}  // namespace specdec::cpu
