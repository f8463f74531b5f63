"""CUDA W4A16 kernel vs the reference (run wherever a GPU exists; skipped elsewhere by conftest)."""
import pytest
import torch
from helpers import SAMPLES, TOLERANCES, random_quantized
from specdec_kernels import W4A16Linear, ops, reference

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("n,k,group_size,m", SAMPLES + [(4096, 4096, 128, 1), (11008, 4096, 128, 33)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_reference(n, k, group_size, m, dtype):
    qw = random_quantized(n, k, group_size)
    x = torch.randn(m, k).to(dtype)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), group_size)
    y = ops.w4a16_gemm(x.cuda(), *packed, group_size, n).cpu()
    expected = reference.w4a16_matmul(x, qw.qweight, qw.scales, qw.mins, group_size)
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
    with pytest.raises(ValueError, match="x must be float16 or bfloat16 on CUDA"):
        ops.w4a16_gemm(torch.randn(2, 64, device="cuda"), *packed, 32, 64)


def test_rejects_cpu_layout():
    qw = random_quantized(64, 64, 32)
    cpu_packed = ops.w4a16_prepack(qw.qweight, qw.scales, qw.mins, 32)
    with pytest.raises(ValueError, match="packed_qweight"):
        ops.w4a16_gemm(torch.randn(2, 64, device="cuda").half(), *[t.cuda() for t in cpu_packed], 32, 64)


@pytest.mark.parametrize("n,k,group_size,m", [(64, 4096, 128, 5), (100, 8192, 32, 1), (130, 2080, 32, 70)])
def test_split_k_matches_reference(n, k, group_size, m):
    """Few column blocks and a long K: the kernel splits K across blocks and sums fp32 partials."""
    test_matches_reference(n, k, group_size, m, torch.float16)


@pytest.mark.parametrize("n,k,group_size", [(4096, 4096, 128), (300, 2048, 64)])
def test_batch_invariance_bitwise(n, k, group_size):
    """A row's output does not depend on the batch it is computed in (M picks the tile shape, not the
    reduction order): verifying T tokens at once gives what decoding them one at a time gives."""
    qw = random_quantized(n, k, group_size)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), group_size)
    x = torch.randn(70, k, device="cuda").half()
    together = ops.w4a16_gemm(x, *packed, group_size, n)
    for rows in (slice(0, 1), slice(3, 20), slice(5, 40)):
        assert torch.equal(ops.w4a16_gemm(x[rows], *packed, group_size, n), together[rows])
    # negative control: the comparison sees a change in the row's own input
    x[3, 0] += 1.0
    assert not torch.equal(ops.w4a16_gemm(x[3:4], *packed, group_size, n), together[3:4])


def test_misaligned_and_strided_x():
    qw = random_quantized(96, 256, 64)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), 64)
    x = torch.randn(5, 256).half()
    expected = ops.w4a16_gemm(x.cuda(), *packed, 64, 96)
    misaligned = torch.empty(5 * 256 + 1, dtype=torch.half, device="cuda")[1:].view(5, 256)
    misaligned.copy_(x)
    assert torch.equal(ops.w4a16_gemm(misaligned, *packed, 64, 96), expected)
    strided = torch.empty(256, 5, dtype=torch.half, device="cuda").t()
    strided.copy_(x)
    assert torch.equal(ops.w4a16_gemm(strided, *packed, 64, 96), expected)


def test_rejects_wrong_in_features():
    qw = random_quantized(64, 128, 32)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), 32)
    with pytest.raises(ValueError, match=r"x.size\(1\) must be 128"):
        ops.w4a16_gemm(torch.randn(2, 64, device="cuda").half(), *packed, 32, 64)


def test_rejects_wrong_group_size_and_out_features():
    qw = random_quantized(64, 128, 32)
    packed = ops.w4a16_prepack(qw.qweight.cuda(), qw.scales.cuda(), qw.mins.cuda(), 32)
    x = torch.randn(2, 128, device="cuda").half()
    with pytest.raises(ValueError, match="packed_scales must have shape"):
        ops.w4a16_gemm(x, *packed, 64, 64)
    with pytest.raises(ValueError, match="out_features 200 does not match"):
        ops.w4a16_gemm(x, *packed, 32, 200)
