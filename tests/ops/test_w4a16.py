import pytest
import torch
from helpers import (
    SAMPLES,
    TOLERANCES,
    W4A16_ISAS,
    assert_close_to_oracle,
    assert_tiles_match_vector_kernel,
    cpu_isa,
    isa_params,
    isa_supported,
    random_quantized,
)
from specdec_kernels import W4A16Linear, ops, quant, reference

ISA_PARAMS = isa_params(W4A16_ISAS)
SUPPORTED_ISAS = [isa for isa in W4A16_ISAS if isa_supported(isa)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def run_gemm(x, qw):
    packed = ops.w4a16_prepack(qw.qweight, qw.scales, qw.mins, qw.group_size)
    return ops.w4a16_gemm(x, *packed, qw.group_size, qw.shape[0])


def assert_close_to_reference(y, x, qw):
    assert_close_to_oracle(y, reference.w4a16_matmul(x, qw.qweight, qw.scales, qw.mins, qw.group_size), x.dtype)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("n,k,group_size,m", SAMPLES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(isa, n, k, group_size, m, dtype):
    qw = random_quantized(n, k, group_size)
    x = torch.randn(m, k).to(dtype)
    with cpu_isa(isa):
        y = run_gemm(x, qw)
    assert y.shape == (m, n) and y.dtype == dtype
    assert_close_to_reference(y, x, qw)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scale_dtypes(scale_dtype):
    qw = random_quantized(77, 128, 32, scale_dtype=scale_dtype)
    x = torch.randn(5, 128)
    assert_close_to_reference(run_gemm(x, qw), x, qw)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_invariance_bitwise(isa, dtype):
    """Each row of a batched call equals that row computed alone, bit for bit (verification of T tokens
    must give the logits of decoding them one by one)."""
    qw = random_quantized(200, 512, 64)
    x = torch.randn(37, 512).to(dtype)
    with cpu_isa(isa):
        batched = run_gemm(x, qw)
        # Register-block / unpacked-chunk paths (FMA) and row-block boundaries (AMX: 16, 8 or 5 rows).
        for m in (1, 2, 5, 6, 8, 9, 15, 16, 17):
            assert torch.equal(run_gemm(x[:m], qw), batched[:m])
        for i in range(0, 37, 6):
            assert torch.equal(run_gemm(x[i : i + 1], qw), batched[i : i + 1])
        # A row keeps its bits whatever its neighbours are.
        shuffled = torch.cat([x[20:], torch.randn(3, 512).to(dtype), x[:20]])
        assert torch.equal(run_gemm(shuffled, qw)[-20:], batched[:20])


@pytest.mark.skipif(not (isa_supported("amx") and isa_supported("avx512vnni")), reason="needs AMX and AVX512-VNNI")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_tile_and_vector_kernels_identical(dtype, group_size):
    assert_tiles_match_vector_kernel(run_gemm, random_quantized(130, 512, group_size, seed=3), 512, dtype)


def test_batch_invariance_check_can_fail():
    """Negative control: the same comparison catches a one-ulp difference."""
    qw = random_quantized(64, 128, 32)
    x = torch.randn(4, 128)
    batched = run_gemm(x, qw)
    nudged = run_gemm(x[:1] * (1 + 2**-20), qw)
    assert not torch.equal(nudged, batched[:1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_isa_paths_agree(dtype):
    qw = random_quantized(100, 256, 128)
    x = torch.randn(11, 256).to(dtype)
    results = []
    for isa in SUPPORTED_ISAS:
        with cpu_isa(isa):
            results.append(run_gemm(x, qw))
    for y in results[1:]:  # float32 accumulation in different orders; 16-bit outputs may round apart by 1 ulp
        atol, rtol = (1e-4, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)
        torch.testing.assert_close(y.float(), results[0].float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_activations(isa, dtype):
    """Rows of x farther apart than K (a slice of a wider tensor) and a transposed x (column-major)."""
    qw = random_quantized(70, 256, 64)
    wide = torch.randn(6, 300).to(dtype)
    column_major = torch.randn(256, 6).to(dtype).t()
    with cpu_isa(isa):
        for x in (wide[:, 7:263], column_major):
            assert_close_to_reference(run_gemm(x, qw), x, qw)


def test_empty_batch():
    qw = random_quantized(32, 64, 32)
    assert run_gemm(torch.randn(0, 64), qw).shape == (0, 32)


def test_unknown_isa_is_an_error():
    qw = random_quantized(32, 64, 32)
    with cpu_isa("sse9"), pytest.raises(RuntimeError, match="SPECDEC_CPU_ISA must be"):
        run_gemm(torch.randn(1, 64), qw)


# ---------------------------------------------------------------- opcheck and torch.compile
@pytest.mark.parametrize("n,k,group_size,m", SAMPLES[:4])
def test_opcheck(n, k, group_size, m):
    qw = random_quantized(n, k, group_size)
    torch.library.opcheck(torch.ops.specdec.w4a16_prepack, (qw.qweight, qw.scales, qw.mins, group_size))
    packed = ops.w4a16_prepack(qw.qweight, qw.scales, qw.mins, group_size)
    torch.library.opcheck(torch.ops.specdec.w4a16_gemm, (torch.randn(m, k), *packed, group_size, n))


def test_torch_compile_linear():
    torch._dynamo.reset()
    layer = W4A16Linear.from_linear(torch.nn.Linear(256, 96), group_size=64)
    x = torch.randn(2, 7, 256)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


# ---------------------------------------------------------------- W4A16Linear
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_matches_dequantized(dtype):
    linear = torch.nn.Linear(128, 48)
    layer = W4A16Linear.from_linear(linear, group_size=32)
    x = torch.randn(3, 5, 128).to(dtype)
    expected = x.double() @ quant.dequantize(quant.quantize_rtn(linear.weight, 32)).double().T + linear.bias.double()
    y = layer(x)
    assert y.shape == (3, 5, 48) and y.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(y.double(), expected, atol=atol * 4, rtol=rtol)


def test_linear_state_dict_and_to():
    layer = W4A16Linear.from_quantized(random_quantized(40, 64, 32), bias=torch.randn(40))
    clone = W4A16Linear.from_quantized(random_quantized(40, 64, 32, seed=1), bias=torch.zeros(40))
    clone.load_state_dict(layer.state_dict())
    clone = clone.to("cpu")  # re-prepacks from the loaded canonical buffers
    x = torch.randn(2, 64)
    assert torch.equal(clone(x), layer(x))


def test_linear_rejects_wrong_width():
    layer = W4A16Linear.from_quantized(random_quantized(40, 64, 32))
    with pytest.raises(ValueError, match="in_features = 64"):
        layer(torch.randn(2, 65))


# ---------------------------------------------------------------- bad inputs
def _packed(n=32, k=64, group_size=32):
    qw = random_quantized(n, k, group_size)
    return qw, ops.w4a16_prepack(qw.qweight, qw.scales, qw.mins, group_size)


def test_bad_group_size():
    qw = random_quantized(32, 64, 32)
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128"):
        ops.w4a16_prepack(qw.qweight, qw.scales, qw.mins, 16)


def test_k_not_multiple_of_group():
    with pytest.raises(ValueError, match="multiple of group_size"):
        ops.w4a16_prepack(torch.zeros(8, 48, dtype=torch.uint8), torch.ones(8, 1), torch.zeros(8, 1), 64)


def test_qweight_dtype():
    qw = random_quantized(32, 64, 32)
    with pytest.raises(ValueError, match="qweight must be Byte"):
        ops.w4a16_prepack(qw.qweight.int(), qw.scales, qw.mins, 32)


def test_scales_shape():
    qw = random_quantized(32, 64, 32)
    with pytest.raises(ValueError, match=r"scales.size\(1\) must be 2"):
        ops.w4a16_prepack(qw.qweight, qw.scales[:, :1], qw.mins[:, :1], 32)


def test_x_wrong_k():
    qw, packed = _packed()
    with pytest.raises(ValueError, match=r"x.size\(1\) must be 64"):
        ops.w4a16_gemm(torch.randn(2, 32), *packed, 32, 32)


def test_x_integer_dtype():
    qw, packed = _packed()
    with pytest.raises(ValueError, match="x must be float32, bfloat16 or float16"):
        ops.w4a16_gemm(torch.ones(2, 64, dtype=torch.int32), *packed, 32, 32)


def test_x_three_dims_to_raw_op():
    qw, packed = _packed()
    with pytest.raises(ValueError, match="x must have 2 dims"):
        ops.w4a16_gemm(torch.randn(1, 2, 64), *packed, 32, 32)


def test_canonical_weights_are_not_a_packed_layout():
    qw, packed = _packed()
    with pytest.raises(ValueError, match="packed_qweight must have 3 dims"):
        ops.w4a16_gemm(torch.randn(2, 64), qw.qweight, *packed[1:], 32, 32)


def test_out_features_mismatch():
    qw, packed = _packed()
    with pytest.raises(ValueError, match="out_features 500 does not match"):
        ops.w4a16_gemm(torch.randn(2, 64), *packed, 32, 500)


def test_device_mismatch():
    qw, packed = _packed()
    # A meta x dispatches to the fake kernel (ops.py, torch._check: RuntimeError), not to the C++ checks.
    with pytest.raises(RuntimeError, match="same device"):
        ops.w4a16_gemm(torch.randn(2, 64, device="meta"), *packed, 32, 32)
