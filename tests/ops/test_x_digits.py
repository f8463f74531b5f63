"""x_digits of w4a16_gemm / w8a16_gemm: the CPU integer paths (AMX, AVX512-VNNI) with 1, 2 or 3 activation
digits against the float64 model of that rounding (reference.round_x_digits), bitwise batch invariance per
digit count, the rounding's error bounds, bad values, and the layers' setting."""
import pytest
import torch
from helpers import (
    SAMPLES,
    assert_close_to_oracle,
    assert_tiles_match_vector_kernel,
    cpu_isa,
    isa_params,
    isa_supported,
    random_quantized,
    random_w8,
)
from specdec_kernels import ops, quant, reference
from specdec_kernels.quant import W8A16Linear

INT8_ISAS = isa_params(("amx", "avx512vnni"))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def gemm(bits, x, w, x_digits):
    """(w4a16_gemm on a QuantizedWeight | w8a16_gemm on (qweight, scales, mins, G)) with x_digits."""
    if bits == 4:
        packed = ops.w4a16_prepack(w.qweight, w.scales, w.mins, w.group_size)
        return ops.w4a16_gemm(x, *packed, w.group_size, w.shape[0], x_digits)
    packed = ops.w8a16_prepack(*w)
    return ops.w8a16_gemm(x, *packed, w[3], w[0].shape[0], x_digits)


def oracle(bits, x, w, x_digits):
    if bits == 4:
        return reference.w4a16_matmul(x, w.qweight, w.scales, w.mins, w.group_size, x_digits=x_digits)
    return reference.w8a16_matmul(x, *w, x_digits=x_digits)


def weights(bits, n, k, group_size):
    return random_quantized(n, k, group_size) if bits == 4 else random_w8(n, k, group_size)


@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("x_digits", [1, 2, 3])
@pytest.mark.parametrize("n,k,group_size,m", SAMPLES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_rounded_reference(isa, bits, x_digits, n, k, group_size, m, dtype):
    w = weights(bits, n, k, group_size)
    x = torch.randn(m, k).to(dtype) * torch.logspace(-2, 2, k).to(dtype)  # groups of mixed scale
    with cpu_isa(isa):
        y = gemm(bits, x, w, x_digits)
    assert_close_to_oracle(y, oracle(bits, x, w, x_digits), dtype)


@pytest.mark.skipif(not isa_supported("avx512vnni"), reason="needs AVX512-VNNI")
def test_one_digit_differs_from_exact_x():
    """Negative control: the rounded reference is needed: one digit is far from exact x."""
    w = random_quantized(64, 256, 32)
    x = torch.randn(5, 256)
    with cpu_isa("avx512vnni"):
        y = gemm(4, x, w, 1)
    assert_close_to_oracle(y, oracle(4, x, w, 1), torch.float32)
    with pytest.raises(AssertionError):
        assert_close_to_oracle(y, oracle(4, x, w, None), torch.float32)


@pytest.mark.parametrize("isa", INT8_ISAS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("x_digits", [1, 2])
def test_batch_invariance_bitwise(isa, bits, x_digits):
    """Each row of a batched call equals that row alone, bit for bit, across every row-block split."""
    w = weights(bits, 200, 512, 32)
    x = torch.randn(37, 512)
    with cpu_isa(isa):
        batched = gemm(bits, x, w, x_digits)
        for m in (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17):
            assert torch.equal(gemm(bits, x[:m], w, x_digits), batched[:m]), m
        for i in range(0, 37, 5):
            assert torch.equal(gemm(bits, x[i:i + 1], w, x_digits), batched[i:i + 1]), i


@pytest.mark.skipif(not (isa_supported("amx") and isa_supported("avx512vnni")),
                    reason="needs AMX and AVX512-VNNI")
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("x_digits", [1, 2])
def test_tile_and_vector_kernels_identical(bits, x_digits):
    assert_tiles_match_vector_kernel(lambda x, w: gemm(bits, x, w, x_digits), weights(bits, 130, 512, 64), 512,
                                     torch.float32)


@pytest.mark.parametrize("digits", [1, 2, 3])
@pytest.mark.parametrize("group_size", [32, 128])
def test_rounding_error_bound(digits, group_size):
    """|x - x~| <= one unit of the last digit, 2^(1 - 7 digits) of the group's largest |x|; exactly
    representable values (small integers times the unit) come back unchanged."""
    x = torch.randn(6, 4 * group_size) * torch.logspace(-30, 30, 6)[:, None]
    rounded = reference.round_x_digits(x, group_size, digits)
    largest = x.double().reshape(6, -1, group_size).abs().amax(-1).repeat_interleave(group_size, 1)
    assert ((rounded - x.double()).abs() <= largest * 2.0 ** (1 - 7 * digits)).all()
    grid = torch.randint(-60, 61, (2, group_size)).float() * 2.0 ** -9
    grid[:, 0] = 100 * 2.0 ** -9  # the group's largest: E = -3, unit of a 1-digit window 2^-9
    assert torch.equal(reference.round_x_digits(grid, group_size, 1), grid.double())


@pytest.mark.parametrize("bad", [0, 4, -1])
def test_bad_x_digits(bad):
    w = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="x_digits must be 1, 2 or 3"):
        gemm(4, torch.randn(2, 64), w, bad)
    with pytest.raises(ValueError, match="x_digits must be 1, 2 or 3"):
        gemm(8, torch.randn(2, 64), random_w8(16, 64, 32), bad)
    with pytest.raises(ValueError, match="x_digits must be 1, 2 or 3"):
        quant.set_x_digits(quant.W4A16Linear(w), bad)


def test_layers_use_their_setting():
    """set_x_digits reaches every packed layer, and a layer's output is the op's with its digits."""
    w = random_quantized(48, 128, 32)
    w8 = random_w8(48, 128, 32)
    model = torch.nn.Sequential(quant.W4A16Linear(w), W8A16Linear(*w8))
    quant.set_x_digits(model, 1)
    assert [layer.x_digits for layer in model] == [1, 1]
    x = torch.randn(3, 128)
    assert torch.equal(model[0](x), gemm(4, x, w, 1))
    assert torch.equal(model[1](x), gemm(8, x, w8, 1))


def test_load_model_sets_the_runner_digits(tmp_path):
    from helpers import write_tiny_gguf
    from specdec_kernels.models import RUNNER_X_DIGITS, load_gguf, load_model

    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path)
    digits = {layer.x_digits for layer in load_model(path).modules() if hasattr(layer, "x_digits")}
    assert digits == {RUNNER_X_DIGITS}
    assert {layer.x_digits for layer in load_gguf(path).modules() if hasattr(layer, "x_digits")} == {3}
    assert {layer.x_digits for layer in load_model(path, x_digits=1).modules() if hasattr(layer, "x_digits")} == {1}
