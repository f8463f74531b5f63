#!/usr/bin/env bash
# Everything that needs a GPU, in one call (for a lent GPU machine: no network, its own CUDA torch):
# build with CUDA, run the CUDA and Triton tests, run the GPU benchmarks; JSON and logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}" make install 2>&1 | tail -20 | tee "$OUT/install.log"
PY=.venv/bin/python
$PY -m pytest -q -m "cuda or triton" tests 2>&1 | tee "$OUT/tests.log" | tail -30
$PY -m specdec_kernels.cli bench w4a16 --device cuda --json "$OUT/w4a16_cuda.json" --plot "$OUT/w4a16_cuda.png" \
  2>&1 | tee "$OUT/w4a16_cuda.txt"
