"""Fuzz w4a16_prepack + w4a16_gemm and w8a16_prepack + w8a16_gemm: odd N and tile boundaries, every group size,
K of 1-4 groups, M from 0, activation and scale dtypes, strided and poisoned inputs, 1-3 activation digits, NaN/inf
activations, every CPU path; a bad argument of either call."""
import pytest
import torch
from corruptions import (corruptions, elsewhere, not_contiguous, wrong_dtype, wrong_rank, wrong_size,
                         wrong_value)
from fuzzing import (ACTIVATION_DTYPES, assert_rejected, assert_unchanged, check_untouched, count, cpu_paths,
                     devices, fuzz, generator, laid_out, on, snapshot, with_specials)
from helpers import assert_close_to_oracle, cpu_isa, random_quantized, random_w8
from hypothesis import given
from hypothesis import strategies as st
from specdec_kernels import ops, reference

GROUP_SIZES = {4: [32, 64, 128], 8: [16, 32, 64, 128]}  # 8-bit weights also in groups of 16 (GGUF Q6_K)
INT8_PATHS = ("amx", "avx512vnni")  # they round x to x_digits digits (reference.round_x_digits)
OPS = {4: (ops.w4a16_prepack, ops.w4a16_gemm, reference.w4a16_matmul),
       8: (ops.w8a16_prepack, ops.w8a16_gemm, reference.w8a16_matmul)}


@st.composite
def gemm_cases(draw, bits):
    """(device, prepack's arguments, gemm's arguments but the packed weights)."""
    device = draw(devices(cuda_kernels=bits == 4))
    group_size = draw(st.sampled_from(GROUP_SIZES[bits]))
    n = draw(st.one_of(st.integers(1, 130), st.sampled_from([16, 63, 64, 65, 128, 129])))
    k, m = group_size * draw(st.integers(1, 4)), draw(st.integers(0, 20))
    dtype = draw(st.sampled_from(ACTIVATION_DTYPES if device == "cpu" else [torch.float16, torch.bfloat16]))
    scale_dtype, seed = draw(st.sampled_from(ACTIVATION_DTYPES)), draw(st.integers(0, 2**31))
    if bits == 4:
        w = random_quantized(n, k, group_size, scale_dtype, seed)
        qweight, scales, mins = w.qweight, w.scales, w.mins
    else:
        qweight, scales, mins, _ = random_w8(n, k, group_size, seed)
        scales, mins = scales.to(scale_dtype), mins.to(scale_dtype)
    x = torch.randn(m, k, generator=generator(draw)) * row_scales(draw, m, dtype)[:, None]
    x = laid_out(draw, with_specials(draw, x.to(dtype)), last_dim_contiguous=False)
    prepack = {name: laid_out(draw, t, last_dim_contiguous=False)
               for name, t in dict(qweight=qweight, scales=scales, mins=mins).items()}
    return device, dict(prepack, group_size=group_size), dict(x=x, group_size=group_size, out_features=n,
                                                               x_digits=draw(st.integers(1, 3)))


def row_scales(draw, m, dtype):
    """Each row's magnitude, 10^-38 (subnormal in float32) to 10^30, float16 down to its subnormals but where
    its outputs cannot overflow (an inf output would make any tolerance pass)."""
    low, high = (-8, 2) if dtype == torch.float16 else (-38, 30)
    return torch.tensor([10.0 ** draw(st.integers(low, high)) for _ in range(m)])


def padded_n(args):
    return -(-args["out_features"] // 64) * 64  # both backends pad N to 64 columns


PREPACK_CORRUPTIONS = [
    wrong_value("group_size", "unsupported", lambda draw, a: draw(st.sampled_from([0, -32, 8, 48, 96, 256]))),
    wrong_size("qweight", 1, names=("group_size", "scales")),  # K no longer matches scales (or G)
    wrong_dtype("qweight", [torch.int8, torch.int32, torch.float32]),
    wrong_rank("qweight"),
    wrong_size("scales", 0),
    wrong_size("scales", 1),
    wrong_rank("scales"),
    wrong_size("mins", 1),
    wrong_dtype("mins", [torch.float64, torch.int32], names=("mins", "scales")),
    wrong_dtype("scales", [torch.int32, torch.uint8], names=("scales",)),
    *elsewhere("scales", "mins"),
]
GEMM_CORRUPTIONS = [
    wrong_value("group_size", "not the prepack's",
                lambda draw, a: draw(st.sampled_from([g for g in (0, 16, 32, 64, 128, 256) if g != a["group_size"]])),
                names=("group_size", "packed_scales")),
    wrong_dtype("x", [torch.float64, torch.int32, torch.uint8]),
    wrong_rank("x"),
    wrong_size("x", 1),
    wrong_value("out_features", "outside the packed tiles",
                lambda draw, a: draw(st.one_of(st.integers(-3, padded_n(a) - 64),
                                               st.integers(padded_n(a) + 1, padded_n(a) + 99)))),
    wrong_value("x_digits", "outside 1-3", lambda draw, a: draw(st.sampled_from([-1, 0, 4, 7]))),
    wrong_dtype("packed_qweight", [torch.int64, torch.float32, torch.uint8]),
    wrong_rank("packed_qweight"),
    wrong_size("packed_qweight", 0, names=("packed_qweight", "out_features")),
    wrong_size("packed_qweight", 1, names=("packed_qweight", "x")),  # K = its size x 8 (4): x no longer fits
    not_contiguous("packed_qweight"),
    wrong_dtype("packed_scales", [torch.float16, torch.float64]),
    wrong_size("packed_scales", 1),
    not_contiguous("packed_mins"),
    *elsewhere("x", "packed_mins"),
]
TARGETS = [("prepack", c) for c in PREPACK_CORRUPTIONS] + [("gemm", c) for c in GEMM_CORRUPTIONS]


def check_product(y, gemm_args, prepack_args, oracle, isa):
    """Rows of finite x match the oracle (with x rounded to x_digits on the integer paths); a row with a NaN or
    inf has no finite output (x inf times a weight 0 is NaN: the oracle's row is all non-finite too)."""
    x, device = gemm_args["x"], y.device.type
    assert y.shape == (x.shape[0], gemm_args["out_features"]) and y.dtype == x.dtype
    digits = gemm_args["x_digits"] if isa in INT8_PATHS and device == "cpu" else None
    weights = [prepack_args[name].cpu() for name in ("qweight", "scales", "mins")]
    expected = oracle(x.cpu(), *weights, prepack_args["group_size"], x_digits=digits)
    finite = x.isfinite().all(1).cpu()
    for row in finite.nonzero().flatten().tolist():  # each row within tolerances of its own magnitude
        assert_close_to_oracle(y[row].cpu(), expected[row], x.dtype, slack=2.0 if device == "cuda" else 1.0)
    assert not y.cpu()[~finite].isfinite().any(), "a row with a NaN/inf activation has a finite output"
    return "valid" if finite.all() else "non-finite"


@pytest.mark.parametrize("bits", [4, 8])
@fuzz
@given(isa=cpu_paths(), data=st.data())
def test_gemm(bits, isa, data):
    """run_case for two calls: a corruption of prepack's arguments, or of gemm's after a valid prepack."""
    prepack, gemm, oracle = OPS[bits]
    device, prepack_args, gemm_args = data.draw(gemm_cases(bits), label="case")
    prepack_args, gemm_args = on(device, prepack_args), on(device, gemm_args)
    target, corruption = data.draw(corruptions(*TARGETS), label="corruption") or (None, None)
    with cpu_isa(isa):
        if target == "prepack":
            assert_rejected(prepack, prepack_args, corruption.apply(data.draw, prepack_args))
            count("error")
            return
        weights = snapshot(prepack_args)
        packed = prepack(**prepack_args)
        assert_unchanged(weights, prepack_args)
        gemm_args.update(packed_qweight=packed[0], packed_scales=packed[1], packed_mins=packed[2])
        if corruption is None:
            count(check_untouched(lambda args: check_product(gemm(**args), args, prepack_args, oracle, isa),
                                  gemm_args))
        else:
            assert_rejected(gemm, gemm_args, corruption.apply(data.draw, gemm_args))
            count("error")
