import pytest
import torch

import specdec_kernels  # noqa: F401  (registers the ops)

# One tolerance table per dtype (atol, rtol) for kernels vs the float64 references.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (1e-1, 2e-2),
}


def assert_close_to_oracle(y: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype):
    """A GEMM result vs its float64 oracle: outputs are sums of K products, so the absolute tolerance
    scales with the output's magnitude."""
    atol, rtol = TOLERANCES[dtype]
    scale = expected.double().abs().max().clamp(min=1.0).item()
    torch.testing.assert_close(y.double(), expected.double(), atol=atol * scale, rtol=rtol)


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
