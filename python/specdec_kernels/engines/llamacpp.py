"""llama.cpp adapter (the optional `llama-cpp-python` package): the baseline users compare against, run on the
same GGUF file, the same prompt token ids and threads as our runner, plain or with its prompt-lookup drafts."""
import time
from contextlib import contextmanager

import torch

from specdec_kernels.decoding import GenerationResult
from specdec_kernels.extras import optional_imports

PROMPT_LOOKUP_TOKENS = 10  # llama-cpp-python's default draft length for prompt lookup, as its users run it
CONTEXT_TOKENS = 4096  # prompt and answer of the benchmark's longest conversation, with room to spare


class LlamaCpp:
    """One llama.cpp model; `generate` counts target evaluations (one per verified step, plus the prefill)."""

    def __init__(self, path: str, prompt_lookup: bool = False, threads: int = 0, seed: int = 0):
        with optional_imports():
            import llama_cpp
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        threads = threads or torch.get_num_threads()
        draft = LlamaPromptLookupDecoding(num_pred_tokens=PROMPT_LOOKUP_TOKENS) if prompt_lookup else None
        with _no_amx_buffers(llama_cpp) if _has_amx() else _as_is():
            self.llm = llama_cpp.Llama(model_path=path, n_ctx=CONTEXT_TOKENS, n_threads=threads,
                                       n_threads_batch=threads, draft_model=draft, seed=seed, verbose=False)
        self.evaluations = 0
        evaluate = self.llm.eval

        def counted(tokens):
            self.evaluations += 1
            return evaluate(tokens)

        self.llm.eval = counted

    def generate(self, prompt_ids, max_new_tokens: int, temperature: float, stop_token: int) -> GenerationResult:
        """Greedy at temperature 0, else plain sampling (no top-k, top-p or min-p cut, as our runner samples).
        The cache is cleared first: every prompt is prefilled whole, as our runner does."""
        self.llm.reset()
        self.evaluations = 0
        tokens, stop_reason = [], "max_new_tokens"
        start = time.perf_counter()
        for token in self.llm.generate(prompt_ids, temp=temperature, top_k=0, top_p=1.0, min_p=0.0,
                                       repeat_penalty=1.0, reset=False):
            tokens.append(int(token))
            if token == stop_token:
                stop_reason = "stop_token"
                break
            if len(tokens) == max_new_tokens:
                break
        seconds = time.perf_counter() - start
        return GenerationResult(tokens=tokens, stop_reason=stop_reason, steps=max(self.evaluations - 1, 0),
                                seconds=seconds)


def _has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return "amx_int8" in cpuinfo.read()
    except OSError:
        return False


@contextmanager
def _as_is():
    yield


@contextmanager
def _no_amx_buffers(llama_cpp):
    """Load with llama.cpp's extra weight buffer types off (llama.cpp's --no-repack). Its AMX buffer type crashed
    (a segfault in llama_decode on every batch of more than one token: prefills, verification) with
    llama-cpp-python 0.3.36 on a Sapphire Rapids KVM guest. llama-cpp-python has no argument for it, so the
    default model parameters it starts from are patched while the model loads."""
    module = llama_cpp.llama.llama_cpp
    default_params = module.llama_model_default_params

    def without_extra_buffers():
        params = default_params()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        module.llama_model_default_params = default_params
