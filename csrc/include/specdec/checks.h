// Argument checks shared by every backend: each failure names the argument, what was expected
// and what was given, so a user error never becomes a crash or a silent wrong answer. Errors in an op's
// arguments raise ValueError in Python (TORCH_CHECK_VALUE) on every backend, the Triton one included.
#pragma once
#include <torch/types.h>

#define SPECDEC_CHECK_DIM(t, d) \
  TORCH_CHECK_VALUE((t).dim() == (d), #t " must have " #d " dims, got shape ", (t).sizes())
#define SPECDEC_CHECK_DTYPE(t, dt) \
  TORCH_CHECK_VALUE((t).scalar_type() == (dt), #t " must be ", (dt), ", got ", (t).scalar_type())
#define SPECDEC_CHECK_CONTIGUOUS(t) TORCH_CHECK_VALUE((t).is_contiguous(), #t " must be contiguous")
#define SPECDEC_CHECK_SAME_DEVICE(a, b)                                                              \
  TORCH_CHECK_VALUE((a).device() == (b).device(), #a " and " #b " must be on the same device, got ", \
                    (a).device(), " and ", (b).device())
#define SPECDEC_CHECK_SIZE(t, i, n) \
  TORCH_CHECK_VALUE((t).size(i) == (n), #t ".size(" #i ") must be ", (n), ", got ", (t).size(i), " (shape ", \
                    (t).sizes(), ")")

namespace specdec {

// 8-bit weights also take groups of 16 (GGUF Q6_K's sub-blocks, docs/design.md 3.4); on the CPU only, the one
// backend with w8a16_gemm.
inline void check_group_size(int64_t group_size, int weight_bits = 4) {
  if (weight_bits == 8) {
    TORCH_CHECK_VALUE(group_size == 16 || group_size == 32 || group_size == 64 || group_size == 128,
                      "group_size of 8-bit weights must be 16, 32, 64 or 128, got ", group_size);
    return;
  }
  TORCH_CHECK_VALUE(group_size == 32 || group_size == 64 || group_size == 128,
              "group_size must be 32, 64 or 128, got ", group_size);
}

// x_digits of the W4A16/W8A16 GEMMs: 7-bit digits per activation on the CPU integer paths.
inline void check_x_digits(int64_t x_digits) {
  TORCH_CHECK_VALUE(x_digits >= 1 && x_digits <= 3, "x_digits must be 1, 2 or 3, got ", x_digits);
}

// The canonical W4A16 format (docs/design.md 3.1): qweight uint8 [N, K/2], scales/mins [N, K/G]; W8A16 the
// same with one byte per weight, qweight uint8 [N, K] (values_per_byte 1).
inline void check_canonical_quantized(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& mins,
                                      int64_t group_size, int64_t values_per_byte) {
  check_group_size(group_size, 8 / static_cast<int>(values_per_byte));
  SPECDEC_CHECK_DIM(qweight, 2);
  SPECDEC_CHECK_DTYPE(qweight, at::kByte);
  SPECDEC_CHECK_DIM(scales, 2);
  SPECDEC_CHECK_DIM(mins, 2);
  const int64_t K = qweight.size(1) * values_per_byte;
  TORCH_CHECK_VALUE(K % group_size == 0, "in_features K = ", K, " must be a multiple of group_size ", group_size);
  SPECDEC_CHECK_SIZE(scales, 0, qweight.size(0));
  SPECDEC_CHECK_SIZE(scales, 1, K / group_size);
  TORCH_CHECK_VALUE(mins.sizes() == scales.sizes(), "mins must have the shape of scales ", scales.sizes(), ", got ",
              mins.sizes());
  TORCH_CHECK_VALUE(scales.scalar_type() == mins.scalar_type(), "scales and mins must share a dtype, got ",
              scales.scalar_type(), " and ", mins.scalar_type());
  TORCH_CHECK_VALUE(at::isFloatingType(scales.scalar_type()), "scales must be floating point, got ",
                    scales.scalar_type());
  SPECDEC_CHECK_SAME_DEVICE(qweight, scales);
  SPECDEC_CHECK_SAME_DEVICE(qweight, mins);
}

inline void check_canonical_w4(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& mins,
                               int64_t group_size) {
  check_canonical_quantized(qweight, scales, mins, group_size, 2);
}

}  // namespace specdec
