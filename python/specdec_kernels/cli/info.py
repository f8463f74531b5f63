"""What this install runs on, for a bug report: specdec info

The version, Python, torch and CUDA, the CPU, the CPU kernel paths this build and CPU can run and the one
dispatched, whether the CUDA kernels are compiled in, and the optional packages installed.
"""
import os
import platform
from importlib import metadata


def add_arguments(parser):
    """No options."""


def runnable_cpu_paths() -> list:
    """The CPU paths this machine runs: the extension refuses to force one that the CPU (or OS) lacks."""
    from specdec_kernels import _C, ops

    runnable = []
    for name in ops.CPU_PATHS:
        with ops.cpu_path(name):
            try:
                runnable.append(_C.cpu_isa())
            except RuntimeError:
                pass
    return runnable


def dispatched_cpu_path() -> str:
    from specdec_kernels import _C

    forced = os.environ.get("SPECDEC_CPU_ISA")
    try:
        name = _C.cpu_isa()
    except RuntimeError as err:  # SPECDEC_CPU_ISA names a path this CPU lacks, or none: worth reporting
        return f"none: {str(err).splitlines()[0]}"
    return f"{name} (SPECDEC_CPU_ISA={forced})" if forced else f"{name} (detected)"


def installed(distribution: str) -> str:
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} not installed"


def report() -> list:
    """-> [(field, value)], in the order printed."""
    import torch

    import specdec_kernels
    from specdec_kernels.extras import EXTRAS
    from specdec_kernels.machine import cpu_description

    # A kernel registered for the CUDA key exists only when setup.py compiled csrc/cuda (SPECDEC_WITH_CUDA).
    cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("specdec::w4a16_gemm", "CUDA")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    python = f"{platform.python_version()} ({platform.python_implementation()}, {platform.platform()})"
    cuda = torch.version.cuda or "none"
    return [
        ("specdec-kernels", f"{specdec_kernels.__version__} ({os.path.dirname(specdec_kernels.__file__)})"),
        ("python", python),
        ("torch", f"{torch.__version__}, CUDA {cuda}, {torch.get_num_threads()} threads"),
        ("cpu", cpu_description()),
        ("cpu paths", " ".join(runnable_cpu_paths())),
        ("cpu path dispatched", dispatched_cpu_path()),
        ("cuda kernels", "compiled" if cuda_kernels else "not compiled"),
        ("gpu", gpu),
        ("optional packages", ", ".join(installed(dist) for _, dist in EXTRAS.values())),
    ]


def run(args):
    rows = report()
    width = max(len(field) for field, _ in rows)
    for field, value in rows:
        print(f"{field:<{width}}  {value}")
    return 0
