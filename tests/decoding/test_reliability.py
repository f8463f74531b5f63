"""Decoding as a long-lived process meets it: resident memory stays flat over 10,000 tokens, a Ctrl-C in the
middle of a generation leaves the model and its Decoder as good as new, and two models decoding in two threads
at once give the tokens each gives alone."""
import ctypes
import gc
import os
import threading
import time
from dataclasses import replace

import pytest
import torch
from specdec_kernels import ops
from specdec_kernels.methods import METHODS
from specdec_kernels.models import Transformer, load_gguf

PROMPT = [1, 5, 7, 9, 3]


def resident_bytes() -> int:
    """Resident memory after the C allocator gave its free pages back: otherwise memory that earlier tests freed
    would hold a leak unseen (glibc's malloc_trim; the count is Linux's)."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- memory
TOKENS, RSS_BOUND = 10_000, 4 << 20  # 4 MiB: ~420 bytes a token; a tensor kept per step would exceed it


def rss_growth(generate_once) -> int:
    """Resident bytes gained over generations totalling TOKENS new tokens, after warm-up generations (caches,
    scratch buffers and allocator pools reach their size in the first ones)."""
    for _ in range(5):
        generate_once()
    before, produced = resident_bytes(), 0
    while produced < TOKENS:
        produced += len(generate_once().tokens)
    return resident_bytes() - before


@pytest.mark.parametrize("method", ["vanilla", "chain-pld"])
def test_resident_memory_stays_flat_over_10k_tokens(tiny, make_decoder, threads, method):
    """Each generation runs to the end of the tiny target's cache (124 tokens), ~80 of them."""
    threads(1)  # ~15x faster for the tiny model on a busy 2-core machine; memory does not depend on it
    decoder = make_decoder(tiny)
    growth = rss_growth(lambda: decoder.generate(method, PROMPT, TOKENS))
    assert growth < RSS_BOUND, f"{method}: resident memory grew {growth / 2**20:.1f} MiB over {TOKENS} tokens"


def test_the_memory_check_sees_a_leak(tiny, make_decoder, threads):
    """Negative control: the same measure over a stream that keeps 1 KiB per token (~10 MiB) exceeds the bound."""
    threads(1)
    decoder, kept = make_decoder(tiny), []
    growth = rss_growth(lambda: decoder.generate("vanilla", PROMPT, TOKENS, stream=lambda _: kept.append(bytes(1024))))
    assert growth > RSS_BOUND, growth


# ---------------------------------------------------------------- Ctrl-C
def statistics(result) -> tuple:
    """Everything a generation reports but its times: stale draft state would show in the acceptances."""
    return (result.tokens, result.stop_reason, result.accepted_per_step, result.draft_sizes, result.draft_lengths,
            result.intermediate_forwards)


def interrupt_at_token(n: int):
    """A stream callback that raises KeyboardInterrupt when the n-th token is produced (as Ctrl-C would)."""
    produced = []

    def stream(token):
        produced.append(token)
        if len(produced) == n:
            raise KeyboardInterrupt

    return stream


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 3}], ids=["greedy", "sampled"])
def test_an_interrupted_generation_leaves_the_decoder_usable(tiny, tiny_path, make_decoder, monkeypatch, method,
                                                             sampling):
    """Interrupted while streaming (at the 1st, 2nd, 5th and 23rd token: the stream sees a step's tokens one by one,
    so some fall inside an accepted path) and between a verification forward and its cache compaction: the next
    call gives a fresh Decoder's output, statistics included (without drafter.reset() they differ)."""
    fresh = make_decoder(load_gguf(tiny_path, max_seq_len=128))
    expected = statistics(fresh.generate(method, PROMPT, 60, **sampling))
    decoder = make_decoder(tiny)
    for n in (1, 2, 5, 23):
        with pytest.raises(KeyboardInterrupt):
            decoder.generate(method, PROMPT, 60, stream=interrupt_at_token(n), **sampling)
        assert statistics(decoder.generate(method, PROMPT, 60, **sampling)) == expected, n
    if method == "vanilla":
        return  # plain decoding compacts nothing
    compactions = []

    def interrupted_compaction(*args):
        compactions.append(1)
        if len(compactions) == 3:
            raise KeyboardInterrupt
        real_compaction(*args)

    real_compaction = ops.kv_compact
    with monkeypatch.context() as patch:
        patch.setattr(ops, "kv_compact", interrupted_compaction)
        with pytest.raises(KeyboardInterrupt):
            decoder.generate(method, PROMPT, 60, **sampling)
    assert statistics(decoder.generate(method, PROMPT, 60, **sampling)) == expected


# ---------------------------------------------------------------- threads
def concurrent_outputs(decoders, methods) -> tuple:
    """(each decoder's outputs alone, the same run by both decoders at once in two threads): its method's tokens for
    several prompts, greedy and sampled."""
    prompts = [torch.randint(0, 40, (6,), generator=torch.Generator().manual_seed(s)).tolist() for s in range(6)]
    settings = [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 1}]

    def outputs(index):
        return [decoders[index].generate(methods[index], prompt, 40, **options).tokens
                for prompt in prompts for options in settings]

    alone = [outputs(0), outputs(1)]
    together, start = [None, None], threading.Barrier(2)

    def run(index):
        start.wait()
        together[index] = outputs(index)

    threads = [threading.Thread(target=run, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return alone, together


@pytest.mark.parametrize("methods", [("vanilla", "chain-pld"), ("eagle2", "hier"), ("ada", "vanilla")])
def test_two_models_in_two_threads_give_their_tokens_alone(tiny, related, make_decoder, methods):
    """Each thread runs its own model (and its own drafter, intermediate); their kernels run at the same time (the
    GIL is released in them, next test)."""
    alone, together = concurrent_outputs([make_decoder(tiny), make_decoder(related)], methods)
    assert together == alone


def test_two_threads_on_one_model_interfere(tiny, make_decoder):
    """Negative control, and the rule it shows: a model holds one sequence's cache, so two threads must not share
    it. Sharing it, the same comparison fails."""
    decoder = make_decoder(tiny)
    alone, together = concurrent_outputs([decoder, decoder], ("vanilla", "vanilla"))
    assert together != alone


def test_a_forward_lets_other_python_threads_run(tiny):
    """The runner's C++ calls release the GIL, as torch's own ops do: a thread woken as a forward starts runs in its
    first half. (They held it: two models in two threads took turns, and so did a server's other threads.)"""
    layers = 200  # the tiny target's layer 200 times over: a forward long enough to see into (~20 ms of 64 tokens)
    config = replace(tiny.config, n_layers=layers, max_seq_len=64)
    deep = Transformer(config, tiny.embedding, [tiny.blocks[0]] * layers, tiny.out_norm, tiny.lm_head)
    stack, tokens = deep._decoder_stack(), torch.randint(0, 40, (64,))
    arguments = (deep.embedding[tokens], deep._steps[None], *deep.rope, deep.k_cache, deep.v_cache,
                 deep.cache_lens, None)
    stack.forward(*arguments)  # warm-up
    for _ in range(5):  # a busy machine may not run the thread at once
        woken, ran_at = threading.Event(), []
        thread = threading.Thread(target=lambda: (woken.wait(), ran_at.append(time.perf_counter())))
        thread.start()
        woken.set()
        start = time.perf_counter()
        stack.forward(*arguments)  # with the GIL held, the thread could run only after this returns
        end = time.perf_counter()
        thread.join()
        if ran_at[0] < (start + end) / 2:
            return
    pytest.fail(f"the thread ran {ran_at[0] - start:.4f} s into a forward of {end - start:.4f} s")
