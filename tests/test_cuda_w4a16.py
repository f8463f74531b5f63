"""CUDA W4A16 kernel vs the reference (run wherever a GPU exists; skipped elsewhere by conftest)."""
import pytest
import torch
from conftest import TOLERANCES
from w4a16_samples import SAMPLES, random_quantized

from specdec_kernels import W4A16Linear, ops, reference

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("n,k,group_size,m", SAMPLES + [(4096, 4096, 128, 1), (11008, 4096, 128, 33)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_reference(n, k, group_size, m, dtype):
    qw = random_quantized(n, k, group_size)
    x = torch.randn(m, k).to(dtype)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), group_size)
    y = ops.w4a16_gemm(x.cuda(), *packed, group_size, n).cpu()
    expected = reference.w4a16_gemm(x, qw.qweight, qw.scales, qw.mins, group_size)
    atol, rtol = TOLERANCES[dtype]
    scale = expected.double().abs().max().clamp(min=1.0).item()
    # Weights are rounded to the activation dtype before the tensor-core product.
    torch.testing.assert_close(y.double(), expected.double(), atol=2 * atol * scale, rtol=2 * rtol)


def test_opcheck():
    qw = random_quantized(128, 256, 64)
    args = (qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), 64)
    torch.library.opcheck(torch.ops.specdec.w4a16_prepack, args)
    packed = ops.w4a16_prepack(*args)
    torch.library.opcheck(torch.ops.specdec.w4a16_gemm, (torch.randn(5, 256, device="cuda").half(), *packed, 64, 128))


def test_linear_to_cuda():
    layer = W4A16Linear.from_linear(torch.nn.Linear(256, 100), group_size=32)
    x = torch.randn(3, 256)
    expected = layer(x)
    layer = layer.to("cuda")
    torch.testing.assert_close(layer(x.cuda().half()).float().cpu(), expected, atol=5e-2, rtol=2e-2)


def test_rejects_float32_activations():
    qw = random_quantized(64, 64, 32)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), 32)
    with pytest.raises(RuntimeError, match="x must be float16 or bfloat16 on CUDA"):
        ops.w4a16_gemm(torch.randn(2, 64, device="cuda"), *packed, 32, 64)


def test_rejects_cpu_layout():
    qw = random_quantized(64, 64, 32)
    cpu_packed = ops.w4a16_prepack(qw.qweight, qw.scales, qw.mins, 32)
    with pytest.raises(RuntimeError, match="packed_qweight"):
        ops.w4a16_gemm(torch.randn(2, 64, device="cuda").half(), *[t.cuda() for t in cpu_packed], 32, 64)
