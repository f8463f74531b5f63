"""hf.speculative_generate on tiny transformers models: with prompt lookup, with an EAGLE head's trees and
chains, and with both, the tokens are model.generate's greedy ones (on prompts where drafts are accepted and
rejected), the cache then holds what a fresh prefill of the committed tokens gives, and bad input is a
ValueError."""
import pytest
import torch
from helpers import tiny_hf_model
from specdec_kernels import hf
from specdec_kernels.drafters import DEFAULT_TREE, DraftShape, EagleDrafter, EagleHead, NgramLookup
from specdec_kernels.train.eagle import Sequence, train
from specdec_kernels.tree import DraftTree

transformers = pytest.importorskip("transformers")

VOCAB = 128  # tiny_hf_model's
NEW_TOKENS = 24
PROMPTS = [torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist()
           for n in (1, 5, 9)]
PROMPTS.append([7, 8, 9, 10] * 3)  # repeats itself: prompt lookup proposes from the start
METHODS = {  # name -> (uses the EAGLE drafter, speculative_generate's options)
    "lookup": (False, {"lookup": NgramLookup()}),
    "eagle-tree": (True, {"shape": DEFAULT_TREE}),
    "eagle-wide-tree": (True, {"shape": DraftShape(total_tokens=10, depth=4, top_k=3)}),
    "eagle-chain": (True, {"shape": DraftShape.chain(3)}),
    "eagle-tree-lookup": (True, {"lookup": NgramLookup()}),
}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    hf.register()
    model = tiny_hf_model(request.param)
    model.set_attn_implementation(hf.NAME)
    return model


@pytest.fixture(scope="module")
def drafter(model) -> EagleDrafter:
    """An EAGLE head trained briefly on the model's greedy answers (as tests/conftest.py's trained_head),
    drafting over the model's own embedding and output rows."""
    target = hf.HFTarget(model)
    torch.manual_seed(0)
    head = EagleHead.from_target(target, torch.arange(VOCAB))
    prompts = torch.randint(0, VOCAB, (48, 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        answers = model.generate(prompts, max_new_tokens=16, do_sample=False)
        features = model(answers, output_hidden_states=True).hidden_states[-1]
    sequences = [Sequence(answers[b].clone(), features[b].half(), answer_start=4)
                 for b in range(len(prompts))]
    train(head, target.embedding, sequences, epochs=8, lr=3e-3, tokens_per_batch=256, log=lambda _: None)
    return EagleDrafter(target, head)


def greedy(model, prompt: list, new_tokens: int) -> list:
    output = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False)
    return output[0, len(prompt):].tolist()


@pytest.mark.parametrize("method", METHODS)
def test_output_is_generates_greedy_output(model, drafter, method):
    eagle, options = METHODS[method]
    accepted, rejected = 0, 0
    for prompt in PROMPTS:
        result = hf.speculative_generate(model, drafter if eagle else None, prompt, NEW_TOKENS, **options)
        assert result.tokens == greedy(model, prompt, NEW_TOKENS), prompt
        steps = list(zip(result.draft_sizes, result.accepted_per_step))
        accepted += sum(emitted > 1 for _, emitted in steps)
        rejected += sum(size > 1 and emitted == 1 for size, emitted in steps)
    assert accepted and rejected, (accepted, rejected)  # both kinds of step were checked


def test_a_stop_token_ends_the_output(model, drafter):
    expected = greedy(model, PROMPTS[1], NEW_TOKENS)
    stop = expected[NEW_TOKENS // 2]
    result = hf.speculative_generate(model, drafter, PROMPTS[1], NEW_TOKENS, stop_tokens=[stop],
                                     lookup=NgramLookup())
    assert result.tokens == expected[: expected.index(stop) + 1]
    assert result.stop_reason == "stop_token"


def assert_cache_holds(model, cache, tokens: list):
    """cache (a DynamicCache) equals a fresh prefill of `tokens`."""
    fresh = transformers.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([tokens]), cache=fresh, use_cache=True)
    for kept, expected in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(kept.keys, expected.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kept.values, expected.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lookup", "eagle-tree-lookup"])
def test_the_cache_after_generation_is_a_fresh_prefill(model, drafter, method):
    eagle, options = METHODS[method]
    target = hf.HFTarget(model)
    prompt = PROMPTS[3]
    expected = prompt + greedy(model, prompt, 2 * NEW_TOKENS)
    result = hf.speculative_generate(target, drafter if eagle else None, prompt, NEW_TOKENS, **options)
    assert result.tokens == expected[len(prompt): len(prompt) + NEW_TOKENS]
    # every token but the last one produced (it is not fed yet), and what the last step accepted beyond
    # max_new_tokens: the greedy sequence as far as the cache goes
    kept = int(target.cache_lens[0])
    assert kept >= len(prompt) + NEW_TOKENS - 1
    assert_cache_holds(model, target.cache, expected[:kept])


def test_commit_path_keeps_a_branchs_entries(model):
    """A path that is not the tree's first nodes: its K/V move up behind the prompt's, the rest is dropped."""
    target, prompt = hf.HFTarget(model), [3, 1, 4]
    draft = DraftTree(torch.tensor([[5, 9, 2, 6, 5, 3]]), torch.tensor([[-1, 0, 0, 1, 2, 4]]))
    path = [0, 2, 4, 5]
    with torch.inference_mode():
        target.reset()
        target(torch.tensor([prompt]))
        target.commit(len(prompt))
        target(draft.tokens, draft.positions(target.cache_lens), draft.mask())
        target.commit_path(torch.tensor([path + [-1, -1]]), torch.tensor([len(path)]))
    assert_cache_holds(model, target.cache, prompt + draft.tokens[0, path].tolist())


def test_features_are_the_final_norm_output(model):
    """What EAGLE reads: the target's last hidden state after its final RMSNorm."""
    target = hf.HFTarget(model)
    normed = []
    hook = model.model.norm.register_forward_hook(lambda module, inputs, output: normed.append(output))
    try:
        with torch.inference_mode():
            target.reset()
            _, hidden = target(torch.tensor([[3, 1, 4, 1, 5]]))
    finally:
        hook.remove()
    assert torch.equal(hidden, normed[0])


def test_bad_input_is_a_value_error(model, drafter):
    with pytest.raises(ValueError, match="prompt is empty"):
        hf.speculative_generate(model, drafter, [], NEW_TOKENS)
    with pytest.raises(ValueError, match="prompt token ids must be in"):
        hf.speculative_generate(model, drafter, [1, VOCAB], NEW_TOKENS)
    with pytest.raises(ValueError, match="a draft tree has at most 256 nodes"):
        hf.speculative_generate(model, drafter, [1, 2], NEW_TOKENS, shape=DraftShape(300, 4, 4))
    sdpa = tiny_hf_model("llama")
    with pytest.raises(ValueError, match="attn_implementation='specdec_tree'"):
        hf.speculative_generate(sdpa, None, [1, 2], NEW_TOKENS)


@pytest.mark.model
def test_a_head_of_another_model_is_refused_at_load(model):
    """The shipped SmolLM2 head (dim 576) for a tiny model (dim 64): a ValueError naming the mismatch, before any
    step runs."""
    from specdec_kernels.drafters import default_head_path
    from specdec_kernels.models import embedded_model_path

    with pytest.raises(ValueError, match="is a head for dim 576"):
        EagleDrafter.from_file(default_head_path(embedded_model_path()), hf.HFTarget(model))
