"""The Triton W4A16 kernel vs the reference. On the CPU it runs under TRITON_INTERPRET=1 (make test-triton),
where bfloat16 is silently wrong: fp32/fp16 there, bfloat16 only on a GPU."""
import pytest
import torch
from helpers import SAMPLES, TOLERANCES, random_quantized
from specdec_kernels import reference

pytestmark = pytest.mark.triton
triton_w4a16 = pytest.importorskip("specdec_kernels.triton.w4a16")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def assert_matches_reference(y, x, qw):
    expected = reference.w4a16_matmul(x, qw.qweight, qw.scales, qw.mins, qw.group_size)
    atol, rtol = TOLERANCES[x.dtype]
    scale = expected.double().abs().max().clamp(min=1.0).item()
    # Weights are rounded to x's dtype before the dot (as on tensor cores): twice the table's slack.
    torch.testing.assert_close(y.cpu().double(), expected.double(), atol=2 * atol * scale, rtol=2 * rtol)


def on_device(qw):
    return [t.to(DEVICE) for t in (qw.qweight, qw.scales, qw.mins)]


# SAMPLES[:5]: M in {1, 3, 16, 64, 127}, odd N, every group size.
@pytest.mark.parametrize("n,k,group_size,m", SAMPLES[:5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(n, k, group_size, m, dtype):
    qw = random_quantized(n, k, group_size)
    x = torch.randn(m, k).to(dtype)
    assert_matches_reference(triton_w4a16.w4a16_matmul(x.to(DEVICE), *on_device(qw), group_size), x, qw)


@pytest.mark.parametrize("split_k", [2, 4])
def test_split_k_matches_reference(split_k):
    """The small-M path sums float32 partials of K slices (chosen from the SM count on a GPU: forced here)."""
    qw = random_quantized(37, 512, 64, scale_dtype=torch.float32)
    x = torch.randn(3, 512)
    assert_matches_reference(triton_w4a16.w4a16_matmul(x.to(DEVICE), *on_device(qw), 64, split_k=split_k), x, qw)


def test_prepacked_pair_is_the_gemm():
    """w4a16_prepack + w4a16_gemm: the signatures of ops.w4a16_prepack/gemm, for W4A16Linear."""
    qw = random_quantized(19, 128, 32)
    x = torch.randn(5, 128).to(DEVICE)
    packed = triton_w4a16.w4a16_prepack(*on_device(qw), 32)
    y = triton_w4a16.w4a16_gemm(x, *packed, 32, 19)
    assert torch.equal(y, triton_w4a16.w4a16_matmul(x, *on_device(qw), 32))


def test_empty_batch():
    qw = random_quantized(16, 64, 32)
    assert triton_w4a16.w4a16_matmul(torch.randn(0, 64).to(DEVICE), *on_device(qw), 32).shape == (0, 16)


# ---------------------------------------------------------------- bad inputs
def test_bad_group_size():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="group_size must be one of"):
        triton_w4a16.w4a16_matmul(torch.randn(1, 64), qw.qweight, qw.scales, qw.mins, 16)


def test_bad_k():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match=r"x must be \[M, 64\]"):
        triton_w4a16.w4a16_matmul(torch.randn(1, 32), qw.qweight, qw.scales, qw.mins, 32)


def test_bad_qweight_dtype():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="qweight uint8"):
        triton_w4a16.w4a16_matmul(torch.randn(1, 64), qw.qweight.int(), qw.scales, qw.mins, 32)


def test_bad_scales_shape():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match=r"scales and mins must be \[16, 2\]"):
        triton_w4a16.w4a16_matmul(torch.randn(1, 64), qw.qweight, qw.scales[:, :1], qw.mins, 32)


def test_bad_x_dtype():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="x must be float16, bfloat16 or float32"):
        triton_w4a16.w4a16_matmul(torch.ones(1, 64, dtype=torch.int32), qw.qweight, qw.scales, qw.mins, 32)


def test_device_mismatch():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="on one device"):
        triton_w4a16.w4a16_matmul(torch.randn(1, 64, device="meta"), qw.qweight, qw.scales, qw.mins, 32)


def test_bad_split_k():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match=r"split_k must divide the number of groups K / G = 2"):
        triton_w4a16.w4a16_matmul(torch.randn(1, 64), qw.qweight, qw.scales, qw.mins, 32, split_k=3)


def test_bad_out_features():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="out_features must be the rows of packed_qweight"):
        triton_w4a16.w4a16_gemm(torch.randn(1, 64), qw.qweight, qw.scales, qw.mins, 32, 17)
