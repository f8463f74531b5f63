#!/usr/bin/env bash
# The package as users get it: `python -m build` makes the sdist; a fresh venv (no system site packages) installs
# it, compiling the extension from the sdist's files alone, and `python -m build` makes the wheel from that same
# unpacked sdist, reusing its compiled objects (the extension compiles once); another fresh venv, without build
# tools, installs the wheel. Each venv gets only the core dependencies (torch, numpy), passes
# scripts/package_smoke.py and `specdec info`, and must hold no transformers, matplotlib, gguf or tqdm.
# Measured on this 2-core machine: 3 min 24 s under load 6 (3.8 min of CPU; the compile ~60% of it), 9 min 8 s
# while a llama.cpp build also ran.
#
# torch is installed first, pinned (TORCH): a plain `torch` requirement would fetch the multi-GB CUDA build. The
# extension compiles against the installed torch, so builds run with --no-build-isolation after installing the
# build requirements; an isolated build would fetch the newest torch (docs/design.md 2.5).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-torch==2.13.0}
export MAX_JOBS=${MAX_JOBS:-2} PIP_DISABLE_PIP_VERSION_CHECK=1
work=$(mktemp -d "${TMPDIR:-/tmp}/specdec-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap removes the work folder
step() { echo "== $* (${SECONDS} s)"; }
quietly() {  # run "$@", showing its output only when it fails
  "$@" >"$work/log" 2>&1 || { tail -40 "$work/log"; return 1; }
}

fresh_venv() {  # $1: folder; a venv holding the core dependencies alone
  python3 -m venv "$1"
  quietly "$1/bin/python" -m pip install "$TORCH" numpy
}

check() {  # $1: a venv with specdec-kernels installed
  (cd "$work" && "$1/bin/python" "$OLDPWD/scripts/package_smoke.py" && "$1/bin/specdec" info)
  local optional
  optional=$("$1/bin/python" -m pip list --format=freeze | grep -iE '^(transformers|matplotlib|gguf|tqdm)==' || true)
  if [ -n "$optional" ]; then
    echo "error: the core install pulled in optional packages: $optional" >&2
    exit 1
  fi
}

step "a fresh venv with the build requirements; python -m build makes the sdist"
fresh_venv "$work/source-venv"
quietly "$work/source-venv/bin/python" -m pip install "setuptools>=77" wheel ninja build
quietly "$work/source-venv/bin/python" -m build --sdist --no-isolation --outdir "$work/dist" .
tar -xzf "$work"/dist/*.tar.gz -C "$work"
source_dir=$(echo "$work"/specdec_kernels-*/)

step "install the sdist (a source build of its files) in that venv"
quietly "$work/source-venv/bin/python" -m pip install --no-build-isolation "$source_dir"
check "$work/source-venv"

step "python -m build makes the wheel from the same sdist"
quietly "$work/source-venv/bin/python" -m build --wheel --no-isolation --outdir "$work/dist" "$source_dir"
ls -l "$work/dist"

step "install the wheel in a fresh venv without build tools"
fresh_venv "$work/wheel-venv"
quietly "$work/wheel-venv/bin/python" -m pip install "$work"/dist/*.whl
check "$work/wheel-venv"
step "sdist and wheel pass"
