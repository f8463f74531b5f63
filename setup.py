"""Source build of specdec_kernels._C: CPU kernels always, CUDA kernels when torch has CUDA and
nvcc exists (or FORCE_CUDA=1). Never decided by torch.cuda.is_available(): builds run on machines
without a GPU. SPECDEC_SANITIZE=1 builds the CPU kernels alone under AddressSanitizer and
UndefinedBehaviorSanitizer (scripts/test_asan.sh)."""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


# UB aborts the run instead of printing a line that a passing test would hide.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
            "-g"]


def sanitize() -> bool:
    return os.environ.get("SPECDEC_SANITIZE") == "1"


def want_cuda() -> bool:
    if sanitize():
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def extension():
    cxx = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
    link = ["-fopenmp"]
    if sanitize():
        # -O1: fast enough to test, readable stack traces. -fno-wrapv: Python's CFLAGS add -fwrapv, which
        # makes signed overflow defined and so invisible to UBSan (the CMake build has no -fwrapv).
        cxx, link = cxx + ["-O1", "-fno-wrapv"] + SANITIZE, link + SANITIZE
    sources = ["csrc/torch_bindings.cpp", "csrc/decoder_stack.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc/include"), os.path.join(ROOT, "csrc")], extra_link_args=link)
    if not want_cuda():
        return CppExtension("specdec_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    # Ampere and Hopper; sm_90a enables wgmma/setmaxnreg-class instructions.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return CUDAExtension(
        "specdec_kernels._C", sources, extra_compile_args={"cxx": cxx + ["-DSPECDEC_WITH_CUDA"], "nvcc": nvcc}, **kwargs
    )


def requirements():
    # The extension links against this torch's C++ ABI, which changes between minor releases: what is built here
    # runs with this torch X.Y only (any patch release). The optional packages are extras (pyproject.toml).
    major_minor = ".".join(torch.__version__.split(".")[:2])
    return [f"torch=={major_minor}.*", "numpy"]


setup(
    install_requires=requirements(),
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
