"""examples/cpp (docs/engines.md): a C++ program built with CMake against libtorch loads the extension's shared
library and calls specdec::tree_verify_greedy through the dispatcher, with no Python interpreter running."""
import glob
import os
import shutil
import subprocess

import pytest
import specdec_kernels
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_a_cpp_program_calls_the_ops(tmp_path):
    build = str(tmp_path / "build")
    configure = ["cmake", "-S", os.path.join(ROOT, "examples", "cpp"), "-B", build,
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    for command in (configure, ["cmake", "--build", build, "-j2"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (library,) = glob.glob(os.path.join(os.path.dirname(specdec_kernels.__file__), "_C*.so"))
    ran = subprocess.run([os.path.join(build, "call_ops"), library], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "accepted 0 1 3 bonus 5"  # the path 42 -> 7 -> 13, then the target's 5
