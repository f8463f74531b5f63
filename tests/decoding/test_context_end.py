"""Decoding up to and past the end of the model's cache, by every method of methods.METHODS: the output stops
there with stop_reason "context_full", holding plain greedy decoding's tokens to the last one; the other stop
reasons; a prompt that alone does not fit, or holds a token outside the vocabulary, is a clear error."""
import pytest
import torch
from specdec_kernels.decoding import ContextOverflow, generate
from specdec_kernels.drafters import DraftShape, EagleDrafter
from specdec_kernels.hierarchical import hierarchical_generate
from specdec_kernels.methods import METHODS

# EAGLE-2 grows (depth - 1) * top_k = 16 tree pairs in the drafter's cache for a draft of at most the target's
# free slots: near the end they once overflowed the drafter's cache.
WIDE_TREE = DraftShape(24, depth=5, top_k=4)
PROMPT_LENGTHS = (100, 121, 125, 127, 128)  # the tiny target's cache holds 128 tokens


def random_prompt(length: int, seed: int = 0) -> list:
    return torch.randint(0, 40, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_decodes_to_the_end_of_the_cache(tiny, make_decoder, method):
    """A prompt of P tokens in a cache of S: S - P + 1 tokens (the last one needs no slot), plain greedy
    decoding's, then stop_reason context_full."""
    decoder = make_decoder(tiny, tree=WIDE_TREE)
    for length in PROMPT_LENGTHS:
        prompt = random_prompt(length)
        plain = generate(tiny, prompt, 1000)
        out = decoder.generate(method, prompt, 1000)
        assert out.tokens == plain.tokens, length
        assert (out.stop_reason, len(out.tokens)) == ("context_full", tiny.max_seq_len - length + 1), length


def test_hierarchical_drafts_with_rejections_reach_the_end(tiny, trained_head, related):
    """The Decoder's intermediate is the target's own layer (always kept); one that differs makes the target
    reject sequences, and cut the intermediate's cache, up to the last slot."""
    drafter = EagleDrafter(tiny, trained_head)
    for length in PROMPT_LENGTHS:
        for seed in range(3):
            prompt = random_prompt(length, seed)
            out = hierarchical_generate(tiny, related, drafter, prompt, 1000, shape=WIDE_TREE, min_draft=9)
            assert out.tokens == generate(tiny, prompt, 1000).tokens, (length, seed)
            assert out.stop_reason == "context_full"


@pytest.mark.parametrize("method", list(METHODS))
def test_stop_reasons(tiny, make_decoder, method):
    decoder = make_decoder(tiny)
    prompt = random_prompt(100)
    plain = generate(tiny, prompt, 1000)
    exactly = decoder.generate(method, prompt, len(plain.tokens))  # the output asked for ends where the cache does
    assert (exactly.tokens, exactly.stop_reason) == (plain.tokens, "max_new_tokens")
    fewer = decoder.generate(method, prompt, 7)
    assert (fewer.tokens, fewer.stop_reason) == (plain.tokens[:7], "max_new_tokens")
    stop = plain.tokens[9]
    stopped = decoder.generate(method, prompt, 1000, stop_tokens=[stop])
    assert stopped.tokens == plain.tokens[: plain.tokens.index(stop) + 1] and stopped.stop_reason == "stop_token"


@pytest.mark.parametrize("method", list(METHODS))
def test_a_prompt_that_does_not_fit_is_a_clear_error(tiny, make_decoder, method):
    decoder = make_decoder(tiny)
    with pytest.raises(ContextOverflow, match="the prompt's 129 tokens do not fit the model's cache of 128"):
        decoder.generate(method, random_prompt(129), 4)
    assert issubclass(ContextOverflow, ValueError)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_token_outside_the_vocabulary_is_a_clear_error(tiny, make_decoder, method):
    decoder = make_decoder(tiny)
    for prompt, named in (([3, -1, 5], "-1..5"), ([3, 40], "3..40")):  # -1 once read the last embedding row
        with pytest.raises(ValueError, match=rf"prompt token ids must be in \[0, 40\), got {named}"):
            decoder.generate(method, prompt, 4)
