"""The llama.cpp baselines of `specdec bench e2e`: left out with a message without llama-cpp-python, and run on
the same GGUF file and prompt ids as our runner when it is installed."""
import importlib.util

import pytest
from specdec_kernels.bench import e2e
from specdec_kernels.models import embedded_model_path

# "Count: 1, 2, 3, 4, 5," in the embedded model's chat template
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2,
          198, 1, 4093, 198, 9825, 42, 216, 33, 28, 216, 34, 28, 216, 35, 28, 216, 36, 28, 216, 37, 28, 2, 198, 1, 520,
          9531, 198]


def test_missing_llamacpp_is_left_out_with_a_message(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else find_spec(name, *a))
    harness = e2e.Harness("model.gguf", 8, 0.0)  # nothing loads before a method runs
    assert harness.check(["vanilla", "llamacpp", "llamacpp-pld"]) == ["vanilla"]
    assert "llama-cpp-python is not installed" in capsys.readouterr().out


@pytest.mark.model
def test_llamacpp_greedy_on_the_embedded_model():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the 'llamacpp' extra) is not installed")
    from specdec_kernels.engines.llamacpp import LlamaCpp
    from specdec_kernels.methods import Decoder

    path = embedded_model_path()
    ours = Decoder(path).generate("vanilla", PROMPT, 12, temperature=0.0, stop_tokens=[2])
    plain = LlamaCpp(path).generate(PROMPT, 12, 0.0, stop_token=2)
    lookup = LlamaCpp(path, prompt_lookup=True).generate(PROMPT, 12, 0.0, stop_token=2)
    assert plain.stop_reason in ("stop_token", "max_new_tokens") and 0 < len(plain.tokens) <= 12
    assert plain.steps == len(plain.tokens) - 1  # one evaluation per token after the prefill
    assert lookup.steps <= len(lookup.tokens) - 1  # its drafts verify several tokens in some evaluations
    # the first token is the prefill's argmax: llama.cpp's 8-bit activations change near-ties, not this one
    assert plain.tokens[0] == lookup.tokens[0] == ours.tokens[0]
