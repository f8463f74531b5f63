"""The one list of W4A16 sample problems, shared by the reference checks, opcheck and torch.compile tests."""
import os
from contextlib import contextmanager

import torch

from specdec_kernels import _C, quant

# (N, K, group_size, M): odd N, tile boundaries (16/64 columns), every group size.
SAMPLES = [(19, 64, 32, 1), (111, 256, 64, 3), (64, 128, 128, 16), (989, 384, 128, 64), (65, 96, 32, 127),
           (128, 512, 64, 9), (48, 128, 32, 8)]
ISAS = ("avx512", "avx2", "generic")  # the vector paths every CPU kernel has
W4A16_ISAS = ("amx", "avx512vnni") + ISAS  # W4A16 also has int8 dot-product paths
ATTENTION_ISAS = ("amx",) + ISAS  # tree attention also has AMX-BF16 tiles


@contextmanager
def cpu_isa(name: str):
    """Force a CPU kernel path for the duration (the kernels read SPECDEC_CPU_ISA on every call)."""
    old = os.environ.get("SPECDEC_CPU_ISA")
    os.environ["SPECDEC_CPU_ISA"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["SPECDEC_CPU_ISA"]
        else:
            os.environ["SPECDEC_CPU_ISA"] = old


def isa_supported(name: str) -> bool:
    with cpu_isa(name):
        try:
            return _C.cpu_isa() == name
        except RuntimeError:
            return False


def isa_params(isas):
    """pytest params for CPU paths: the ones this CPU (or OS) lacks are skipped, saying so."""
    import pytest

    return [pytest.param(isa, marks=pytest.mark.skipif(not isa_supported(isa), reason=f"this CPU/OS lacks {isa}"))
            for isa in isas]


def random_quantized(n: int, k: int, group_size: int, scale_dtype=torch.float16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.02 + 0.001).to(scale_dtype)
    mins = (torch.randn(n, k // group_size, generator=g) * 0.05).to(scale_dtype)
    return quant.QuantizedWeight(qweight, scales, mins, group_size)


def random_w8(n: int, k: int, group_size: int, seed: int = 0):
    """8-bit weights (qweight uint8 [N, K], q 0..255, float16 scales, mins near -128 scales, G) for w8a16_gemm."""
    g = torch.Generator().manual_seed(seed)
    qweight = torch.randint(0, 256, (n, k), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.01 + 0.001).half()
    mins = (-128 * scales.float() + torch.randn(n, k // group_size, generator=g) * 0.01).half()
    return qweight, scales, mins, group_size


def assert_tiles_match_vector_kernel(run_gemm, weights, k: int, dtype):
    """The AMX path multiplies few rows with the VNNI vector kernel and more with tiles; the avx512vnni path is
    that vector kernel for every M. Both compute exact integer sums, so every M must give the same bits."""
    for m in (1, 2, 3, 4, 5, 16, 17, 40):
        x = torch.randn(m, k).to(dtype) * torch.logspace(-3, 3, m).to(dtype)[:, None]  # rows of mixed scale
        with cpu_isa("amx"):
            tiles = run_gemm(x, weights)
        with cpu_isa("avx512vnni"):
            vector = run_gemm(x, weights)
        assert torch.equal(tiles, vector), (m, (tiles.double() - vector.double()).abs().max().item())
