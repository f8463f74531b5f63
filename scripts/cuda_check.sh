#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu for sm_80 and sm_90a without a GPU, print ptxas' register/spill report
# per kernel, and fail if a GEMM kernel spills to local memory. Used by `make cuda-check` and CI.
# The flags are setup.py's (torch's CUDAExtension adds the __CUDA_NO_HALF*__ defines: no implicit half
# conversions). One nvcc call per file covers both architectures (the host side, most of the time, is
# compiled once); files compile in parallel (CUDA_CHECK_JOBS, default: the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "cuda-check: nvcc not found" >&2; exit 1; }
includes=$("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
includes="$includes -I$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# CPU builds of torch ship c10/cuda headers but not the one header CMake generates for CUDA builds;
# supply it (one define) so the launchers compile against whichever torch is installed.
if ! "$PY" -c "import torch, os, sys; sys.exit(not os.path.exists(os.path.join(os.path.dirname(torch.__file__), 'include/c10/cuda/impl/cuda_cmake_macros.h')))"; then
  mkdir -p "$out/stubs/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$out/stubs/c10/cuda/impl/cuda_cmake_macros.h"
  includes="$includes -I$out/stubs"
fi

compile() {  # $1 = a .cu file; ptxas' report goes to $out/<name>.log
  local name
  name=$(basename "$1" .cu)
  if "$NVCC" -std=c++20 -O3 --use_fast_math --expt-relaxed-constexpr -lineinfo -Xptxas -v --threads 2 \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a -Icsrc/include -Icsrc $includes \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -c "$1" -o "$out/$name.o" >"$out/$name.log" 2>&1; then
    echo "compiled $1"
  else
    cat "$out/$name.log" >&2
    echo "cuda-check: $1 failed to compile" >&2
    return 1
  fi
}
export -f compile
export NVCC includes out
start=$SECONDS
ls csrc/cuda/*.cu | xargs -P "${CUDA_CHECK_JOBS:-$(nproc)}" -I{} bash -c 'compile {}'

# ptxas prints, per kernel: "Compiling entry function '<mangled>' for 'sm_XX'", a stack/spill line and a
# "Used N registers" line. One table row per (file, arch, kernel).
status=0
for log in "$out"/*.log; do
  rows=$(awk '/Compiling entry function/ { name = $0; sub(/.*function ./, "", name); sub(/. for .*/, "", name);
                                         arch = $0; sub(/.* for ./, "", arch); sub(/.$/, "", arch) }
              /bytes spill stores/ { stores = $5; loads = $9 }
              /Used [0-9]+ registers/ { regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
                                       smem = "0"; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
                                       printf "%-7s %5s %7s %7s %7s  %s\n", arch, regs, stores, loads, smem, name }' "$log" |
    c++filt | sed -E 's/\((.{60}).*\)$/(\1...)/')
  printf '\n== %s\n%-7s %5s %7s %7s %7s  %s\n' "$(basename "$log" .log).cu" arch regs spill_st spill_ld smem kernel
  echo "$rows"
  if echo "$rows" | awk '/gemm/ && ($3 > 0 || $4 > 0) { bad = 1 } END { exit !bad }'; then
    echo "cuda-check: a GEMM kernel in $(basename "$log" .log).cu spills to local memory" >&2
    status=1
  fi
done
echo "cuda-check: $(ls csrc/cuda/*.cu | wc -l) files, sm_80 + sm_90a, $((SECONDS - start)) s"
exit $status
