#!/usr/bin/env bash
# Everything that needs a GPU, in one call, for a lent GPU machine (python3 with its own CUDA torch, triton
# and nvcc; no network): build the extension with CUDA (`make install`), run the CUDA and Triton tests, run
# the GPU benchmarks. Logs and JSON go under $OUT (default benchmarks/results/gpu).
#
#   benchmarks/gpu_suite.sh                 # install, test, bench
#   benchmarks/gpu_suite.sh test bench      # any subset, in that order (e.g. one per 10-minute slot)
#
# pip runs offline: packages the machine lacks (pytest, hypothesis, ...) come from $WHEELHOUSE when it
# exists (fill it on a machine with a registry: pip download -d wheelhouse pytest hypothesis), else the
# install warns and the tests that need them cannot run. Exit status: non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=.venv/bin/python
WHEELHOUSE=${WHEELHOUSE:-wheelhouse}
steps=${*:-install test bench}
mkdir -p "$OUT"
failed=()
want() { [[ " $steps " == *" $1 "* ]]; }

if want install; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/device.txt"
  # The machine's torch must be the one we build against and run: a venv that sees the system packages
  # (without pip of its own when ensurepip is missing; the system pip then serves it).
  [ -x "$PY" ] || python3 -m venv --system-site-packages .venv 2>/dev/null ||
    python3 -m venv --without-pip --system-site-packages .venv
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE" PIP_DISABLE_PIP_VERSION_CHECK=1
  install=(make install)
  command -v make >/dev/null || install=(bash scripts/install.sh)  # what `make install` runs
  if FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "${install[@]}" >"$OUT/install.log" 2>&1; then
    tail -5 "$OUT/install.log"
  else
    tail -40 "$OUT/install.log"
    failed+=(install)
  fi
  # The CUDA kernels must be registered, not merely compiled: a CPU-only build would pass silently otherwise.
  $PY - <<'EOF' 2>&1 | tee "$OUT/registered.txt" || failed+=(registration)
import torch
import specdec_kernels  # noqa: F401
ops = ["w4a16_prepack", "w4a16_gemm", "tree_attention", "tree_verify_greedy", "tree_verify_sample", "kv_compact"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"specdec::{op}", "CUDA")]
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPU: {torch.cuda.get_device_name()}")
print("CUDA kernels missing for: " + ", ".join(missing) if missing else "CUDA kernels registered for every op")
raise SystemExit(1 if missing else 0)
EOF
fi

if want test; then
  $PY -m pytest -q -m "cuda or triton" tests --junitxml="$OUT/tests.xml" -p no:cacheprovider >"$OUT/tests.log" 2>&1 ||
    failed+=(test)
  tail -40 "$OUT/tests.log"
fi

if want bench; then
  $PY -m specdec_kernels.cli bench w4a16 --device cuda --json "$OUT/w4a16_cuda.json" --plot "$OUT/w4a16_cuda.png" \
    >"$OUT/w4a16_cuda.txt" 2>&1 || failed+=(bench-w4a16)
  cat "$OUT/w4a16_cuda.txt"
  $PY -m specdec_kernels.cli bench gpu-tree --json "$OUT/tree_gpu.json" >"$OUT/tree_gpu.txt" 2>&1 || failed+=(bench-tree)
  cat "$OUT/tree_gpu.txt"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_suite: failed: ${failed[*]} (logs in $OUT)" >&2
  exit 1
fi
echo "gpu_suite: ${steps} done (logs and JSON in $OUT)"
