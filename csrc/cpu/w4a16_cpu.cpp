// CPU backend of w4a16_prepack / w4a16_gemm: argument checks, the prepack transform, the run-time
// ISA choice and the OpenMP split over output tiles. The arithmetic lives in w4a16_kernel.inc.
#include <ATen/ATen.h>
#include <omp.h>
#include <torch/library.h>

#include "specdec/checks.h"
#include "specdec/cpu_isa.h"
#include "w4a16_isa.h"

namespace specdec::cpu {
namespace {

constexpr int64_t kTileN = 16, kTilesPerStep = 2;

int64_t padded_tiles(int64_t n) {
  const int64_t tiles = (n + kTileN - 1) / kTileN;
  return (tiles + kTilesPerStep - 1) / kTilesPerStep * kTilesPerStep;
}

// [N, C] -> [tiles, C, 16]: column-tiles of 16 output rows, zero-padded past N.
at::Tensor to_tiles(const at::Tensor& t, int64_t tiles) {
  const int64_t n = t.size(0);
  at::Tensor padded = at::constant_pad_nd(t, {0, 0, 0, tiles * kTileN - n}, 0);
  return padded.view({tiles, kTileN, t.size(1)}).transpose(1, 2).contiguous();
}

std::vector<at::Tensor> w4a16_prepack_cpu(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& mins,
                                          int64_t group_size) {
  check_canonical_w4(qweight, scales, mins, group_size);
  const int64_t tiles = padded_tiles(qweight.size(0));
  return {to_tiles(qweight, tiles), to_tiles(scales.to(at::kFloat), tiles), to_tiles(mins.to(at::kFloat), tiles)};
}

at::Tensor w4a16_gemm_cpu(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                          const at::Tensor& packed_mins, int64_t group_size, int64_t out_features) {
  check_group_size(group_size);
  SPECDEC_CHECK_DIM(x, 2);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "x must be float32, bfloat16 or float16, got ", x.scalar_type());
  SPECDEC_CHECK_DIM(packed_qweight, 3);
  SPECDEC_CHECK_DTYPE(packed_qweight, at::kByte);
  SPECDEC_CHECK_DTYPE(packed_scales, at::kFloat);
  SPECDEC_CHECK_DTYPE(packed_mins, at::kFloat);
  SPECDEC_CHECK_CONTIGUOUS(packed_qweight);
  SPECDEC_CHECK_CONTIGUOUS(packed_scales);
  SPECDEC_CHECK_CONTIGUOUS(packed_mins);
  const int64_t tiles = packed_qweight.size(0), K = packed_qweight.size(1) * 2;
  TORCH_CHECK(packed_qweight.size(2) == kTileN && tiles % kTilesPerStep == 0,
              "packed_qweight is not in the CPU layout [tiles, K/2, 16] (did you call w4a16_prepack on CPU?), got ",
              packed_qweight.sizes());
  SPECDEC_CHECK_SIZE(x, 1, K);
  TORCH_CHECK(K % group_size == 0, "K = ", K, " must be a multiple of group_size ", group_size);
  const std::vector<int64_t> s_shape{tiles, K / group_size, kTileN};
  TORCH_CHECK(packed_scales.sizes() == s_shape, "packed_scales must have shape ", s_shape, ", got ",
              packed_scales.sizes());
  TORCH_CHECK(packed_mins.sizes() == s_shape, "packed_mins must have shape ", s_shape, ", got ", packed_mins.sizes());
  TORCH_CHECK(out_features > (tiles - kTilesPerStep) * kTileN && out_features <= tiles * kTileN,
              "out_features ", out_features, " does not match packed_qweight with ", tiles, " tiles");
  SPECDEC_CHECK_SAME_DEVICE(x, packed_qweight);

  const at::Tensor x32 = x.to(at::kFloat).contiguous();
  const int64_t M = x.size(0);
  at::Tensor y = at::empty({M, tiles * kTileN}, x.options().dtype(at::kFloat));
  if (M == 0) return y.narrow(1, 0, out_features).to(x.scalar_type());
  const W4A16Args args{x32.data_ptr<float>(), (int)M, (int)K, (int)group_size,
                       packed_qweight.data_ptr<uint8_t>(), packed_scales.data_ptr<float>(),
                       packed_mins.data_ptr<float>(), y.data_ptr<float>(), tiles * kTileN};
  const auto run = [&]() {
    switch (chosen_isa()) {
      case Isa::kAvx512: return avx512::w4a16_gemm_tiles;
      case Isa::kAvx2: return avx2::w4a16_gemm_tiles;
      default: return generic::w4a16_gemm_tiles;
    }
  }();
  const int64_t pairs = tiles / kTilesPerStep;
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t begin = pairs * id / threads, end = pairs * (id + 1) / threads;
    if (begin < end) run(args, begin, end);
  }
  return y.narrow(1, 0, out_features).to(x.scalar_type()).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("w4a16_prepack", &w4a16_prepack_cpu);
  m.impl("w4a16_gemm", &w4a16_gemm_cpu);
}

}  // namespace specdec::cpu
