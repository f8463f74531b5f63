#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu for sm_80 and sm_90a without a GPU, print ptxas' register/spill report
# per kernel, and fail if a GEMM kernel spills to local memory. Used by `make cuda-check` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "cuda-check: nvcc not found" >&2; exit 1; }
includes=$("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
py_include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# CPU builds of torch ship c10/cuda headers but not the one header CMake generates for CUDA builds;
# supply it (one define) so the launchers compile against whichever torch is installed.
if ! "$PY" -c "import torch, os, sys; sys.exit(not os.path.exists(os.path.join(os.path.dirname(torch.__file__), 'include/c10/cuda/impl/cuda_cmake_macros.h')))"; then
  mkdir -p "$out/stubs/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$out/stubs/c10/cuda/impl/cuda_cmake_macros.h"
  includes="$includes -I$out/stubs"
fi
status=0
for cu in csrc/cuda/*.cu; do
  for arch in 80 90a; do
    log="$out/$(basename "$cu" .cu)_sm$arch.log"
    "$NVCC" -std=c++20 -O3 --expt-relaxed-constexpr -lineinfo -Xptxas -v \
      -gencode "arch=compute_$arch,code=sm_$arch" -Icsrc/include $includes -I"$py_include" \
      -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -c "$cu" -o "$out/$(basename "$cu").sm$arch.o" \
      >"$log" 2>&1 || { cat "$log"; echo "cuda-check: $cu failed to compile for sm_$arch" >&2; exit 1; }
    # ptxas prints, per kernel: "Compiling entry function '<mangled>'", the stack/spill line, "Used N registers".
    report=$(awk '/Compiling entry function/ { name = $0; sub(/.*function ./, "", name); sub(/. for .*/, "", name) }
                  /bytes spill stores/ { spill = $0; sub(/^ +/, "", spill) }
                  /Used [0-9]+ registers/ { sub(/.*: /, ""); print name; print "    " $0 "; " spill }' "$log" | c++filt)
    echo "== $cu sm_$arch"
    echo "$report"
    # Name lines (demangled) are followed by their register/spill line.
    if echo "$report" | grep -i -A1 "gemm" | grep -E "[1-9][0-9]* bytes spill (stores|loads)" >/dev/null; then
      echo "cuda-check: a GEMM kernel in $cu spills to local memory on sm_$arch" >&2
      status=1
    fi
  done
done
exit $status
