"""Our tree attention inside transformers models (engines.hf_tree_attention): a draft tree verified in one
forward gives every node the logits of its own path run as a plain sequence through transformers' sdpa
attention; without a tree mask attention is causal; what the kernel cannot honour is a ValueError."""
import copy
import subprocess
import sys

import pytest
import torch
from helpers import tiny_hf_model, trees
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels import hf
from specdec_kernels.engines.hf_tree_attention import tree_attention_forward
from specdec_kernels.tree import MAX_TREE_NODES, PADDING_PARENT, DraftTree, causal_mask

transformers = pytest.importorskip("transformers")

VOCAB = 128  # tiny_hf_model's
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def models(request):
    """(the tiny model attending with specdec_tree, the same weights attending with transformers' sdpa)."""
    hf.register()
    hf.register()  # idempotent
    assert transformers.AttentionInterface()[hf.NAME] is tree_attention_forward
    reference = tiny_hf_model(request.param)
    model = copy.deepcopy(reference)
    model.set_attn_implementation(hf.NAME)
    return model, reference


def path_to(parents: list, node: int) -> list:
    """Root-to-node indices."""
    path = [node]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


@settings(max_examples=8, deadline=None)
@given(tree=trees(max_batch=2, max_nodes=20, vocab=VOCAB), prompt_length=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_each_tree_node_gets_its_paths_logits(models, tree, prompt_length, seed):
    model, reference = models
    tokens, parents = tree
    batch = tokens.shape[0]
    prompts = torch.randint(0, VOCAB, (batch, prompt_length), generator=torch.Generator().manual_seed(seed))
    draft = DraftTree(tokens, parents)
    cache = transformers.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=prompts, cache=cache, use_cache=True)
        positions = draft.positions(torch.full((batch,), prompt_length))
        logits = model(input_ids=tokens, position_ids=positions, cache=cache, tree_mask=draft.mask()).logits
        for b in range(batch):
            row = parents[b].tolist()
            for node in (i for i, parent in enumerate(row) if parent != PADDING_PARENT):
                sequence = torch.cat([prompts[b], tokens[b, path_to(row, node)]])[None]
                torch.testing.assert_close(logits[b, node], reference(input_ids=sequence).logits[0, -1],
                                           **TOLERANCE)


def test_without_a_tree_mask_attention_is_causal(models):
    """A prefill longer than one kernel call takes (it goes in chunks), then single-token steps."""
    model, reference = models
    tokens = torch.randint(0, VOCAB, (1, MAX_TREE_NODES + 44), generator=torch.Generator().manual_seed(0))
    prefill = MAX_TREE_NODES + 40
    caches = [transformers.DynamicCache(config=model.config) for _ in range(2)]
    with torch.inference_mode():
        for step in [tokens[:, :prefill]] + list(tokens[:, prefill:].split(1, 1)):
            got, expected = (m(input_ids=step, cache=c, use_cache=True).logits
                             for m, c in zip((model, reference), caches))
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_generate_gives_the_sdpa_models_tokens(models):
    model, reference = models
    for length in (1, 4, 9):
        prompt = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.inference_mode():
            got, expected = (m.generate(prompt, max_new_tokens=32, do_sample=False)
                             for m in (model, reference))
        assert torch.equal(got, expected), length


def verify(model, tokens: torch.Tensor, tree_mask: torch.Tensor, **kwargs):
    """A tree's forward after a 3-token prompt."""
    cache = transformers.DynamicCache(config=model.config)
    model(input_ids=torch.tensor([[1, 2, 3]]), cache=cache, use_cache=True)
    return model(input_ids=tokens, cache=cache, tree_mask=tree_mask, **kwargs)


def test_what_the_kernel_cannot_honour_is_a_value_error(models):
    model, _ = models
    chain = DraftTree.chain(torch.tensor([[4, 5, 6]]))
    with torch.inference_mode():
        with pytest.raises(ValueError, match="tree_mask must have shape"):
            verify(model, chain.tokens, chain.mask()[:, :2])
        too_many = MAX_TREE_NODES + 1  # a chain: DraftTree itself refuses such a tree
        with pytest.raises(ValueError, match=f"q's T must be in \\[1, {MAX_TREE_NODES}\\]"):
            verify(model, torch.zeros(1, too_many, dtype=torch.long), causal_mask(1, too_many))
        with pytest.raises(ValueError, match="takes no padding"):
            model(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1]]))
        with pytest.raises(ValueError, match="not a 4-D attention_mask"):
            model(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.zeros(1, 1, 2, 2))


def test_sliding_windows_are_refused():
    hf.register()
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      use_sliding_window=True, sliding_window=4, max_window_layers=0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.set_attn_implementation(hf.NAME)
    with torch.inference_mode(), pytest.raises(ValueError, match="sliding window"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


def test_importing_the_integration_does_not_import_transformers():
    code = "import sys, specdec_kernels.hf; assert 'transformers' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
