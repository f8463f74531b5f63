"""vLLM serves a specdec_w4a16 checkpoint on our W4A16 op (engines/vllm_plugin.py, found through the package's
vllm.general_plugins entry point): the converted embedded model's greedy completions against our runner's on the
same folder, a bounded load test, and bad quantization configs refused by name. Marked `vllm`: they run in vLLM's
own environment (make test-vllm), where vLLM is installed next to this package."""
import concurrent.futures

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.model]

PROMPTS = 8
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    from specdec_kernels.checkpoint.convert import convert
    from specdec_kernels.models import embedded_model_path

    return convert(embedded_model_path(), str(tmp_path_factory.mktemp("vllm") / "smollm2-w4"))


@pytest.fixture(scope="module")
def server(converted):
    from specdec_kernels.engines.vllm_server import vllm_server

    with vllm_server(converted, "--max-num-seqs", "8") as url:
        yield url


@pytest.fixture(scope="module")
def prompts(converted) -> list:
    from specdec_kernels.bench.e2e import first_turns
    from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer

    tokenizer = load_tokenizer(converted)
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": turn}]) for turn in first_turns()[:PROMPTS]]


def test_greedy_completions_agree_with_the_runner(converted, server, prompts):
    from specdec_kernels.decoding import generate
    from specdec_kernels.engines.transformers import load_tokenizer
    from specdec_kernels.engines.vllm_server import complete
    from specdec_kernels.models import load_hf

    tokenizer, runner = load_tokenizer(converted), load_hf(converted, max_seq_len=1024)
    same = 0
    for ids in prompts:
        ours = tokenizer.decode(generate(runner, ids, MAX_TOKENS, stop_tokens=[tokenizer.eos_token_id]).tokens,
                                skip_special_tokens=True)
        theirs = complete(server, converted, ids, MAX_TOKENS)["text"]
        same += ours == theirs
        print(f"runner: {ours!r}\nvllm:   {theirs!r}")
    # Both multiply with the same op and activation digits; attention, norms and RoPE are each engine's own, so
    # a near-tie between two tokens may resolve differently and the texts part from there.
    print(f"identical greedy completions: {same} of {len(prompts)}")
    assert same >= len(prompts) - 1


def test_our_eagle3_head_drafts_in_vllm_without_changing_greedy_output(converted, server, prompts):
    """vLLM's own EAGLE-3 speculative decoding with the shipped EAGLE-3 head (our public folder layout) on our
    quantized target: the completions are those of the same server without drafts, and drafts are accepted."""
    from specdec_kernels.drafters.head_file import shipped_file
    from specdec_kernels.engines.vllm_server import complete, eagle3_config, speculative_counts, vllm_server
    from specdec_kernels.methods import EAGLE3_SUFFIX
    from specdec_kernels.models import embedded_model_path

    head = shipped_file(embedded_model_path(), EAGLE3_SUFFIX)
    plain = [complete(server, converted, ids, MAX_TOKENS)["text"] for ids in prompts]
    with vllm_server(converted, "--max-num-seqs", "8", *eagle3_config(head)) as url:
        drafted = [complete(url, converted, ids, MAX_TOKENS)["text"] for ids in prompts]
        counts = speculative_counts(url)
    same = sum(a == b for a, b in zip(plain, drafted))
    print(f"EAGLE-3 in vLLM: {same} of {len(prompts)} completions identical; {counts}")
    assert same >= len(prompts) - 1 and counts["num_drafts"] > 0 and counts["num_accepted_tokens"] > 0


def test_a_bounded_load_completes_every_request(converted, server, prompts):
    from specdec_kernels.engines.vllm_server import complete

    requests = [prompts[i % len(prompts)] for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ids: complete(server, converted, ids, 16), requests))
    assert all(a["tokens"] > 0 and a["finish_reason"] in ("stop", "length") for a in answers)


@pytest.mark.parametrize("change, named", [
    ({"version": 2}, "quantization_config.version must be 1"),
    ({"group_size": 48}, "quantization_config.group_size must be one of"),
    ({"bits": 8}, "quantization_config.bits must be 4"),
])
def test_a_bad_quantization_config_is_refused_by_name(change, named):
    from specdec_kernels.checkpoint import quantization_config
    from specdec_kernels.engines.vllm_plugin import SpecdecW4A16Config

    with pytest.raises(ValueError, match=named):
        SpecdecW4A16Config.from_config({**quantization_config(32), **change})
