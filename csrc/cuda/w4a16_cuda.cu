// CUDA backend of w4a16_prepack / w4a16_gemm: argument checks, the fragment-order prepack (ATen ops
// on the device, once per weight), the choice of K splits, dtype dispatch and the launches of
// w4a16_kernel.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "specdec/checks.h"
#include "w4a16_kernel.cuh"

namespace specdec::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Canonical uint8 [N, K/2] -> int32 [K/16, N_pad/16 * 32] in the fragment order drawn in
// w4a16_kernel.cuh: word (k16, p, lane = 4g + t) has nibble e*4 + j*2 + h = q[p*16 + j*8 + g][k16*16 + h*8 + 2t + e].
at::Tensor pack_fragments(const at::Tensor& qweight, int64_t n_pad) {
  const int64_t n = qweight.size(0), k = qweight.size(1) * 2;
  at::Tensor q = at::stack({qweight.bitwise_and(15), qweight.bitwise_right_shift(4)}, -1).reshape({n, k});
  q = at::constant_pad_nd(q, {0, 0, 0, n_pad - n}, 0).to(at::kLong);
  // B[k][n] = q[n][k], viewed as [k16, h, t, e, p, j, g].
  at::Tensor b = q.t().reshape({k / 16, 2, 4, 2, n_pad / 16, 2, 8});
  at::Tensor nibbles = b.permute({0, 4, 6, 2, 3, 5, 1}).reshape({k / 16, n_pad / 16, 32, 8});  // [.., e, j, h]
  at::Tensor shifts = at::arange(0, 32, 4, q.options());
  at::Tensor words = nibbles.bitwise_left_shift(shifts).sum(-1);  // < 2^32, exact in int64
  words = at::where(words >= (int64_t{1} << 31), words - (int64_t{1} << 32), words);  // two's complement
  return words.to(at::kInt).reshape({k / 16, n_pad / 16 * 32}).contiguous();
}

std::vector<at::Tensor> w4a16_prepack_cuda(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& mins,
                                           int64_t group_size) {
  check_canonical_w4(qweight, scales, mins, group_size);
  const c10::cuda::CUDAGuard guard(qweight.device());
  const int64_t n = qweight.size(0), n_pad = ceil_div(n, kBlockN) * kBlockN;
  auto columns = [&](const at::Tensor& t) {  // [N, K/G] -> [K/G, N_pad]
    return at::constant_pad_nd(t, {0, 0, 0, n_pad - n}, 0).t().contiguous();
  };
  return {pack_fragments(qweight, n_pad), columns(scales), columns(mins)};
}

// cp.async moves 16-byte chunks: every operand must start on a 16-byte boundary (rows then are too:
// K is a multiple of 32 and N_pad of 64). A view that starts elsewhere is copied.
at::Tensor aligned16(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0 ? c : c.clone();
}

// K splits per 64-column block: enough blocks for about 4 per SM (at small M the only way to keep
// enough weight bytes in flight), >= 8 k tiles (512 of K) per split so the pipeline fills, and at
// most 4 (each split costs 8 bytes of fp32 partial traffic per output). Depends on N, K and the GPU
// only, never on M: a row's result does not depend on the batch it is computed in.
int choose_splits(int64_t n_pad, int64_t K, int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t col_blocks = n_pad / kBlockN, k_tiles = ceil_div(K, kBlockK);
  const int64_t most = std::clamp<int64_t>(k_tiles / 8, 1, 4);
  return static_cast<int>(std::clamp<int64_t>(ceil_div(4 * sms, col_blocks), 1, most));
}

template <class T, int M_TILES>
void launch(const W4A16Params<T>& params, int splits, cudaStream_t stream) {
  const dim3 grid(params.n_pad / kBlockN, ceil_div(params.M, 16 * M_TILES), splits);
  w4a16_gemm_kernel<T, M_TILES><<<grid, kThreads, 0, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One m16 tile per 16 rows, up to 4 (64 rows) per block; larger M spreads over more blocks.
template <class T>
void gemm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, const at::Tensor& mins,
          at::Tensor& y, int64_t group_size, int64_t n_pad) {
  const int64_t M = x.size(0), N = y.size(1), K = x.size(1);
  const int splits = choose_splits(n_pad, K, x.get_device());
  const at::Tensor partial = splits > 1 ? at::empty({splits, M, N}, x.options().dtype(at::kFloat)) : at::Tensor();
  const W4A16Params<T> params{reinterpret_cast<const T*>(x.data_ptr()),
                              reinterpret_cast<const uint32_t*>(packed.data_ptr<int32_t>()),
                              reinterpret_cast<const T*>(scales.data_ptr()),
                              reinterpret_cast<const T*>(mins.data_ptr()),
                              reinterpret_cast<T*>(y.data_ptr()),
                              splits > 1 ? partial.data_ptr<float>() : nullptr,
                              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), static_cast<int>(n_pad),
                              static_cast<int>(group_size), static_cast<int>(ceil_div(ceil_div(K, kBlockK), splits))};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (M <= 16)
    launch<T, 1>(params, splits, stream);
  else if (M <= 32)
    launch<T, 2>(params, splits, stream);
  else
    launch<T, 4>(params, splits, stream);
  if (splits > 1) {
    const int64_t mn = M * N;
    const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(mn, 256), 4096));
    w4a16_reduce_splits_kernel<T><<<blocks, 256, 0, stream>>>(partial.data_ptr<float>(), params.y, mn, splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// x_digits is checked and otherwise unused: x is multiplied in its own dtype (float16 / bfloat16).
at::Tensor w4a16_gemm_cuda(const at::Tensor& x, const at::Tensor& packed_qweight, const at::Tensor& packed_scales,
                           const at::Tensor& packed_mins, int64_t group_size, int64_t out_features, int64_t x_digits) {
  check_group_size(group_size);
  check_x_digits(x_digits);
  SPECDEC_CHECK_DIM(x, 2);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                    "x must be float16 or bfloat16 on CUDA, got ", x.scalar_type());
  SPECDEC_CHECK_DIM(packed_qweight, 2);
  SPECDEC_CHECK_DTYPE(packed_qweight, at::kInt);
  SPECDEC_CHECK_SAME_DEVICE(x, packed_qweight);
  SPECDEC_CHECK_SAME_DEVICE(x, packed_scales);
  SPECDEC_CHECK_SAME_DEVICE(x, packed_mins);
  const int64_t K = packed_qweight.size(0) * 16, n_pad = packed_qweight.size(1) / 2;
  TORCH_CHECK_VALUE(packed_qweight.size(1) % (2 * kBlockN) == 0 && n_pad > 0,
                    "packed_qweight is not in the CUDA layout [K/16, 2 * N_pad] (did you call w4a16_prepack on "
                    "CUDA?), got ",
                    packed_qweight.sizes());
  SPECDEC_CHECK_SIZE(x, 1, K);
  TORCH_CHECK_VALUE(K % group_size == 0, "K = ", K, " must be a multiple of group_size ", group_size);
  const std::vector<int64_t> s_shape{K / group_size, n_pad};
  TORCH_CHECK_VALUE(packed_scales.sizes() == s_shape, "packed_scales must have shape ", s_shape, ", got ",
                    packed_scales.sizes());
  TORCH_CHECK_VALUE(packed_mins.sizes() == s_shape, "packed_mins must have shape ", s_shape, ", got ",
                    packed_mins.sizes());
  TORCH_CHECK_VALUE(out_features > n_pad - kBlockN && out_features <= n_pad, "out_features ", out_features,
                    " does not match packed_qweight (N padded to ", n_pad, ")");
  TORCH_CHECK_VALUE(x.numel() < (int64_t{1} << 31) && x.size(0) * out_features < (int64_t{1} << 31),
                    "x and the output must have fewer than 2^31 elements, got x ", x.sizes());
  const c10::cuda::CUDAGuard guard(x.device());

  const at::Tensor xa = aligned16(x), packed = aligned16(packed_qweight);
  const at::Tensor scales = aligned16(packed_scales.to(x.scalar_type()));
  const at::Tensor mins = aligned16(packed_mins.to(x.scalar_type()));
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (x.size(0) == 0) return y;
  if (x.scalar_type() == at::kHalf)
    gemm<__half>(xa, packed, scales, mins, y, group_size, n_pad);
  else
    gemm<__nv_bfloat16>(xa, packed, scales, mins, y, group_size, n_pad);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("w4a16_prepack", &w4a16_prepack_cuda);
  m.impl("w4a16_gemm", &w4a16_gemm_cuda);
}

}  // namespace specdec::cuda
