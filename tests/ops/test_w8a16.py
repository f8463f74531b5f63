"""8-bit weights (w8a16_gemm, quant.W8A16Linear: the Q8_0 output head) against the float64 oracle."""
import pytest
import torch
from helpers import (
    SAMPLES,
    W4A16_ISAS,
    assert_close_to_oracle,
    assert_tiles_match_vector_kernel,
    cpu_isa,
    isa_params,
    isa_supported,
    random_w8,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import ops, reference
from specdec_kernels.quant import W8A16Linear

W8_ISAS = isa_params(W4A16_ISAS)  # the same CPU paths: integer (AMX, VNNI) and float FMA (AVX-512, AVX2, portable)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 8-bit weights also take groups of 16 (GGUF Q6_K): k steps of 16 on the integer paths
W8_SAMPLES = SAMPLES + [(37, 48, 16, 1), (130, 640, 16, 5), (64, 2048, 16, 33)]


def run_gemm(x, w):
    qweight, scales, mins, group_size = w
    return ops.w8a16_gemm(x, *ops.w8a16_prepack(qweight, scales, mins, group_size), group_size, qweight.shape[0])


def assert_close_to_reference(y, x, w):
    assert_close_to_oracle(y, reference.w8a16_matmul(x, *w), x.dtype)


@pytest.mark.parametrize("isa", W8_ISAS)
@pytest.mark.parametrize("n,k,group_size,m", W8_SAMPLES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(isa, n, k, group_size, m, dtype):
    w, x = random_w8(n, k, group_size), torch.randn(m, k).to(dtype)
    with cpu_isa(isa):
        y = run_gemm(x, w)
    assert y.shape == (m, n) and y.dtype == dtype
    assert_close_to_reference(y, x, w)


@pytest.mark.parametrize("isa", W8_ISAS)
@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 40), split=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_batch_invariance_bitwise(isa, m, split, seed):
    """A row's output does not depend on the rows computed with it (verification == decoding, bitwise)."""
    w = random_w8(85, 192, 64, seed)
    x = torch.randn(m, 192, generator=torch.Generator().manual_seed(seed))
    with cpu_isa(isa):
        batched = run_gemm(x, w)
        split = min(split, m)
        parts = [part for part in (x[:split], x[split:]) if part.shape[0]]
        assert torch.equal(torch.cat([run_gemm(part, w) for part in parts]), batched)
        assert torch.equal(run_gemm(x[-1:], w), batched[-1:])


@pytest.mark.skipif(not (isa_supported("amx") and isa_supported("avx512vnni")), reason="needs AMX and AVX512-VNNI")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [16, 32, 64, 128])
def test_tile_and_vector_kernels_identical(dtype, group_size):
    """8-bit B tiles read in place (AMX) against the VPDPBUSD kernel."""
    assert_tiles_match_vector_kernel(run_gemm, random_w8(130, 512, group_size, seed=3), 512, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_paths_agree(dtype, monkeypatch):
    """W8A16Linear on w8a16_gemm and on its two-4-bit-plane fallback (the path off the CPU) compute the same W."""
    w = random_w8(130, 256, 32)
    x = torch.randn(9, 256).to(dtype)
    direct = W8A16Linear(*w)
    assert direct.planes is None and "w8a16_gemm" in repr(direct)
    assert_close_to_reference(direct(x), x, w)
    monkeypatch.setattr(ops, "w8a16_supported", lambda device: False)
    planes = W8A16Linear(*w)
    assert planes.planes is not None and "two 4-bit planes" in repr(planes)
    assert_close_to_reference(planes(x), x, w)


def test_linear_bias_and_shapes():
    w = random_w8(40, 64, 32)
    bias = torch.randn(40)
    layer = W8A16Linear(*w, bias=bias)
    x = torch.randn(2, 3, 64)
    expected = reference.w8a16_matmul(x.reshape(6, 64), *w).reshape(2, 3, 40) + bias
    torch.testing.assert_close(layer(x), expected, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.randn(2, 65))
    with pytest.raises(ValueError, match="uint8"):
        W8A16Linear(w[0].int(), *w[1:])


@pytest.mark.parametrize("n,k,group_size,m", [*SAMPLES[:3], W8_SAMPLES[-3]])
def test_opcheck(n, k, group_size, m):
    qweight, scales, mins, _ = random_w8(n, k, group_size)
    torch.library.opcheck(torch.ops.specdec.w8a16_prepack, (qweight, scales, mins, group_size))
    packed = ops.w8a16_prepack(qweight, scales, mins, group_size)
    torch.library.opcheck(torch.ops.specdec.w8a16_gemm, (torch.randn(m, k), *packed, group_size, n))


def test_rejects_a_4_bit_layout_and_bad_shapes():
    qweight, scales, mins, g = random_w8(32, 128, 32)
    w4_packed = ops.w4a16_prepack(qweight[:, :64].contiguous(), scales, mins, g)
    with pytest.raises(ValueError, match="x.size"):  # [tiles, K/8, 16] read as [tiles, K/4, 16]: K = 64
        ops.w8a16_gemm(torch.randn(2, 128), *w4_packed, g, 32)
    with pytest.raises(ValueError, match="multiple of group_size"):
        ops.w8a16_prepack(qweight[:, :48].contiguous(), scales[:, :1].contiguous(), mins[:, :1].contiguous(), g)
    with pytest.raises(ValueError, match="qweight must be Byte"):
        ops.w8a16_prepack(qweight.to(torch.int8), scales, mins, g)
    packed = ops.w8a16_prepack(qweight, scales, mins, g)
    with pytest.raises(ValueError, match="out_features"):
        ops.w8a16_gemm(torch.randn(2, 128), *packed, g, 100)
    assert ops.w8a16_gemm(torch.randn(0, 128), *packed, g, 32).shape == (0, 32)


def test_groups_of_16_are_8_bit_on_the_cpu_only(monkeypatch):
    """Groups of 16 (GGUF Q6_K) exist for 8-bit weights on the CPU only: 4-bit weights and the 4-bit planes that
    stand for 8-bit weights off the CPU refuse them."""
    qweight, scales, mins, _ = random_w8(32, 64, 16)
    with pytest.raises(ValueError, match="group_size must be 32, 64 or 128, got 16"):
        ops.w4a16_prepack(qweight[:, :32].contiguous(), scales, mins, 16)
    monkeypatch.setattr(ops, "w8a16_supported", lambda device: False)
    with pytest.raises(ValueError, match="groups of 16 run on the CPU only"):
        W8A16Linear(qweight, scales, mins, 16)
