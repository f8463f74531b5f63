"""The Triton W4A16 kernel vs the reference. On the CPU it runs under TRITON_INTERPRET=1 (make test-triton),
where bfloat16 is silently wrong: fp32/fp16 there, bfloat16 only on a GPU."""
import pytest
import torch
from conftest import TOLERANCES
from w4a16_samples import SAMPLES, random_quantized

from specdec_kernels import reference

pytestmark = pytest.mark.triton
triton_w4a16 = pytest.importorskip("specdec_kernels.triton.w4a16")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("n,k,group_size,m", SAMPLES[:5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(n, k, group_size, m, dtype):
    qw = random_quantized(n, k, group_size)
    x = torch.randn(m, k).to(dtype)
    y = triton_w4a16.w4a16_gemm(x.to(DEVICE), qw.qweight.to(DEVICE), qw.scales.to(DEVICE), qw.mins.to(DEVICE),
                                group_size).cpu()
    expected = reference.w4a16_gemm(x, qw.qweight, qw.scales, qw.mins, group_size)
    atol, rtol = TOLERANCES[dtype]
    scale = expected.double().abs().max().clamp(min=1.0).item()
    # Weights are rounded to x's dtype before the dot (as on tensor cores): twice the table's slack.
    torch.testing.assert_close(y.double(), expected.double(), atol=2 * atol * scale, rtol=2 * rtol)


def test_bad_group_size():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="group_size must be one of"):
        triton_w4a16.w4a16_gemm(torch.randn(1, 64), qw.qweight, qw.scales, qw.mins, 16)


def test_bad_k():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match=r"x must be \[M, 64\]"):
        triton_w4a16.w4a16_gemm(torch.randn(1, 32), qw.qweight, qw.scales, qw.mins, 32)


def test_bad_qweight_dtype():
    qw = random_quantized(16, 64, 32)
    with pytest.raises(ValueError, match="qweight uint8"):
        triton_w4a16.w4a16_gemm(torch.randn(1, 64), qw.qweight.int(), qw.scales, qw.mins, 32)
