"""The installed package's smoke test (scripts/check_package.sh runs it in fresh venvs holding torch and
numpy alone): the extension loads from the install, not the checkout; a W4A16 GEMM and greedy tree
verification agree with the references; loading a model says which extra it needs."""
import os
import sys
import tempfile

import specdec_kernels
import torch
from specdec_kernels import ops, reference
from specdec_kernels.extras import MissingExtra
from specdec_kernels.models import load_gguf


def check_installed():
    where = os.path.dirname(specdec_kernels.__file__)
    assert os.path.realpath(where).startswith(os.path.realpath(sys.prefix)), f"{where}: not in {sys.prefix}"


def check_w4a16_gemm():
    g = torch.Generator().manual_seed(0)
    n, k, group_size = 111, 256, 64  # odd N: a partial tile
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.02 + 0.001).half()
    mins = (torch.randn(n, k // group_size, generator=g) * 0.05).half()
    x = torch.randn(9, k, generator=g)
    y = ops.w4a16_gemm(x, *ops.w4a16_prepack(qweight, scales, mins, group_size), group_size, n)
    expected = reference.w4a16_matmul(x, qweight, scales, mins, group_size, x_digits=3)
    torch.testing.assert_close(y, expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


def check_tree_verify():
    g = torch.Generator().manual_seed(1)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 3, 3]] * 3)
    tokens = torch.randint(0, 4, parents.shape, generator=g)
    logits = torch.randn(*parents.shape, 4, generator=g)
    for got, expected in zip(ops.tree_verify_greedy(tokens, parents, logits),
                             reference.tree_verify_greedy(tokens, parents, logits)):
        assert torch.equal(got, expected), (got, expected)


def check_model_loading_names_the_extra():
    with tempfile.NamedTemporaryFile(suffix=".gguf") as file:
        try:
            load_gguf(file.name)
        except MissingExtra as err:
            assert "specdec-kernels[models]" in str(err), err
            return
    raise AssertionError("load_gguf ran without gguf installed")


if __name__ == "__main__":
    check_installed()
    check_w4a16_gemm()
    check_tree_verify()
    check_model_loading_names_the_extra()
    print(f"smoke test passed: specdec-kernels {specdec_kernels.__version__} from {specdec_kernels.__file__}")
