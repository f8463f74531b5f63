"""`specdec info`, the lines a user pastes into a bug report, checked against what the machine and the install
say independently (the forced CPU paths of tests/helpers.py, /proc/cpuinfo, the package metadata)."""
import os
import subprocess
import sys
from importlib import metadata

import pytest
import torch
from helpers import W4A16_ISAS, cpu_isa, isa_supported
from specdec_kernels import _C


def info(**env) -> dict:
    result = subprocess.run([sys.executable, "-m", "specdec_kernels.cli", "info"], capture_output=True,
                            text=True, timeout=120, check=True, env={**os.environ, **env})
    rows = [line.split("  ", 1) for line in result.stdout.splitlines()]
    return {field.strip(): value.strip() for field, value in rows}


@pytest.fixture(scope="module")
def detected():
    return info(SPECDEC_CPU_ISA="")  # empty: the path is detected, even under a run that forces one


def test_versions_and_machine(detected):
    assert detected["specdec-kernels"].split()[0] == metadata.version("specdec-kernels")
    assert detected["python"].split()[0] == ".".join(map(str, sys.version_info[:3]))
    assert detected["torch"].startswith(f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}, ")
    with open("/proc/cpuinfo") as f:
        fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    assert detected["cpu"] == f"{fields['model name']}, family {fields['cpu family']}, model {fields['model']}"
    assert detected["cuda kernels"] == "not compiled" or torch.version.cuda is not None
    for distribution in ("gguf", "safetensors", "transformers", "matplotlib", "tqdm"):
        assert f"{distribution} {metadata.version(distribution)}" in detected["optional packages"]


def test_cpu_paths(detected):
    runnable = [isa for isa in W4A16_ISAS if isa_supported(isa)]
    assert detected["cpu paths"].split() == runnable
    with cpu_isa(""):
        assert detected["cpu path dispatched"] == f"{_C.cpu_isa()} (detected)"


def test_forced_cpu_path(detected):
    forced = info(SPECDEC_CPU_ISA="generic")
    assert forced["cpu path dispatched"] == "generic (SPECDEC_CPU_ISA=generic)"
    assert forced["cpu paths"] == detected["cpu paths"]  # probing the paths leaves the forced one in place


def test_a_path_that_does_not_exist_is_reported_not_raised():
    wrong = info(SPECDEC_CPU_ISA="avx1024")
    assert wrong["cpu path dispatched"].startswith("none: SPECDEC_CPU_ISA must be amx, avx512vnni"), wrong
