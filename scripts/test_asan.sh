#!/usr/bin/env bash
# `make test-asan`: the CPU extension built with AddressSanitizer and UndefinedBehaviorSanitizer
# (SPECDEC_SANITIZE=1, setup.py) into build/asan/ (the regular in-place _C stays untouched), then the op
# tests and the decoder stack once per CPU path this machine has, the portable one included (SPECDEC_CPU_ISA;
# tests/conftest.py runs each parametrized path once), and the fuzzer (it draws each case's path itself).
# The first sanitizer report ends the run with a stack trace.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LIB=$PWD/build/asan/lib
CXX=${CXX:-c++}  # the compiler torch's build uses: its runtime must match the one the objects were built for

SPECDEC_SANITIZE=1 MAX_JOBS=${MAX_JOBS:-2} "$PY" setup.py -q build_ext --build-temp build/asan/temp \
  --build-lib "$LIB"
# The package as imported in this run: links to the sources, with the sanitized _C as its one real file.
find "$LIB/specdec_kernels" -maxdepth 1 -type l -delete
for entry in python/specdec_kernels/*; do
  case "$entry" in *.so | */__pycache__) ;; *) ln -s "$PWD/$entry" "$LIB/specdec_kernels/" ;; esac
done

# python is not built with ASan, so ASan's runtime must be loaded first; libstdc++ too, because python does
# not link it and ASan's __cxa_throw interceptor must find the real one at start-up, or the first C++
# exception (every TORCH_CHECK error test) aborts the process (google/sanitizers#934).
export LD_PRELOAD="$($CXX -print-file-name=libasan.so) $($CXX -print-file-name=libstdc++.so)"
# CPython and torch keep allocations for the process's lifetime, which LeakSanitizer reports at exit.
export ASAN_OPTIONS=detect_leaks=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH=$LIB

# The sanitized build has no CUDA kernels: the fuzzer must not draw a GPU (and -m "not cuda" below leaves the
# CUDA tests out of the report instead of listing them as skipped).
export CUDA_VISIBLE_DEVICES=

# The run must test the sanitized build: _C comes from build/asan and calls into the ASan and UBSan runtimes.
so=$("$PY" -c "from specdec_kernels import _C; print(_C.__file__)")
[[ $so == "$LIB"/* ]] || { echo "imported $so, not the sanitized build" >&2; exit 1; }
symbols=$(nm -D --undefined-only "$so")
for runtime_call in __asan_report_load __ubsan_handle; do
  grep -q $runtime_call <<<"$symbols" || { echo "$so: no $runtime_call, not instrumented" >&2; exit 1; }
done
echo "sanitized _C: $so"

# --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process, which would take
# pytest's default (file-descriptor) capture and the report with it.
pytest=("$PY" -m pytest -q --capture=sys)
cpu_isa() { "$PY" -c "from specdec_kernels import _C; print(_C.cpu_isa())" 2>/dev/null; }
for isa in amx avx512vnni avx512 avx2 generic; do
  if [ "$(SPECDEC_CPU_ISA=$isa cpu_isa)" != "$isa" ]; then
    echo "== $isa: this CPU lacks it, skipped"
    continue
  fi
  echo "== SPECDEC_CPU_ISA=$isa"
  SPECDEC_CPU_ISA=$isa "${pytest[@]}" -m "not cuda" tests/ops tests/models/test_decoder_stack.py
done
echo "== the fuzzer (SPECDEC_FUZZ_CASES per op)"
"${pytest[@]}" tests/fuzz
