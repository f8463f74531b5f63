"""AdaEAGLE's draft length predictor: shapes, lengths rounded and clipped to [0, k_max], its file, the batched
labels equal to what the real drafter's chain accepts, training that lowers the loss, bad input."""
import pytest
import torch
from specdec_kernels.decoding import generate, speculative_generate
from specdec_kernels.drafters import (
    DraftShape,
    EagleDrafter,
    EagleHead,
    LengthPredictor,
    PredictorConfig,
    load_predictor,
    save_predictor,
)
from specdec_kernels.drafters.ldlp import MAX_DRAFT_LENGTH, LengthTable, OnePositionPredictor, to_length
from specdec_kernels.train.eagle import generate_batch
from specdec_kernels.train.ldlp import (best_constant, chain_labels, evaluate, examples, held_out_table, train,
                                       weighted_l1)
from specdec_kernels.train.ldlp import main as train_main

K_MAX = 4


@pytest.fixture(scope="module")
def sequences(tiny):
    prompts = torch.randint(0, 40, (24, 3), generator=torch.Generator().manual_seed(1)).tolist()
    return generate_batch(tiny, prompts, 24)


@pytest.fixture
def head(trained_head):
    """conftest's trained head: its chains are accepted for 0 to K_MAX tokens, so the labels vary."""
    return trained_head


def predictor_for(tiny, k_max=K_MAX, seed=0):
    torch.manual_seed(seed)
    return LengthPredictor(PredictorConfig(tiny.config.dim, k_max, hidden_dim=32)).eval()


# ---------------------------------------------------------------- the predictor
def test_shapes(tiny):
    predictor = predictor_for(tiny)
    embeds, features = torch.randn(3, 7, tiny.config.dim), torch.randn(3, 7, tiny.config.dim)
    confidence = torch.rand(3, 7)
    assert predictor(embeds, features, confidence).shape == (3, 7)
    lengths = predictor.lengths(embeds, features, confidence)
    assert lengths.shape == (3, 7) and lengths.dtype == torch.int64
    one = predictor.lengths(embeds[0, 0], features[0, 0].half(), confidence[0, 0])  # one position; float16 features
    assert one.shape == ()


def test_lengths_are_rounded_and_clipped():
    raw = torch.tensor([-3.0, -0.4, 0.4, 0.6, 1.5, 2.5, 3.49, 3.51, 99.0])
    assert to_length(raw, 4).tolist() == [0, 0, 0, 1, 2, 2, 3, 4, 4]  # torch.round: half to even


@pytest.mark.parametrize("bias, expected", [(-50.0, 0), (2.2, 2), (50.0, K_MAX)])
def test_predictor_lengths_stay_in_range(tiny, bias, expected):
    predictor = predictor_for(tiny)
    with torch.no_grad():
        predictor.w_out.weight.zero_()
        predictor.w_out.bias.fill_(bias)
    lengths = predictor.lengths(torch.randn(5, tiny.config.dim), torch.randn(5, tiny.config.dim), torch.rand(5))
    assert lengths.tolist() == [expected] * 5


BINNED = "binned"  # lengths by the raw output's bin of a length table, not rounded


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_length", [0, 1, BINNED])
def test_one_position_predictor_matches_the_module(tiny, seed, min_length):
    """Decoding's numpy snapshot gives predictor.lengths' length at every position whose raw value is not within
    float32 rounding of a half; inputs at the embedded model's scales (features ~15x the embeddings), raw values
    spread over [0, k_max] and past it, non-default norm affine and float16 features."""
    predictor = predictor_for(tiny, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        predictor.norm.weight.uniform_(0.5, 2.0, generator=generator)
        predictor.norm.bias.normal_(0, 0.3, generator=generator)
        predictor.w_out.weight.mul_(20.0)
        predictor.w_out.bias.fill_(K_MAX / 2)
    if min_length == BINNED:  # edges between and beyond the rounding points; bins 0..5 -> lengths 3, 0, 4, 1, 2, 0
        predictor.length_table = LengthTable((-0.2, 0.7, 1.3, 2.9, 4.1), ((1, 1, 1, 1, 1),) * 6)
        predictor.bin_lengths = (3, 0, 4, 1, 2, 0)
    else:
        predictor.min_length = min_length
    one_position = OnePositionPredictor(predictor)
    embeds = torch.randn(400, tiny.config.dim, generator=generator)
    features = (15 * torch.randn(400, tiny.config.dim, generator=generator)).half()
    confidence = torch.rand(400, generator=generator)
    raw, lengths = predictor(embeds, features, confidence), predictor.lengths(embeds, features, confidence)
    got = torch.tensor([one_position(e, f, float(c)) for e, f, c in zip(embeds, features, confidence)])
    if min_length == BINNED:
        near_edge = (raw[:, None] - torch.tensor(predictor.length_table.edges)).abs().amin(1) < 1e-4
        clear = ~near_edge
        expected = torch.tensor(predictor.bin_lengths)[torch.bucketize(raw, torch.tensor([-0.2, 0.7, 1.3, 2.9, 4.1]),
                                                                       right=True)]
        assert torch.equal(lengths, expected) and set(lengths.tolist()) == {0, 1, 2, 3, 4}
    else:
        clear = (raw - raw.round()).abs() < 0.5 - 1e-4
        assert set(lengths.tolist()) == set(range(min_length, K_MAX + 1))  # every length and both clips were seen
    assert clear.sum() > 390 and torch.equal(got[clear], lengths[clear])


def test_file_round_trip(tiny, tmp_path):
    predictor = predictor_for(tiny, seed=3)
    path = str(tmp_path / "tiny.ldlp.safetensors")
    save_predictor(predictor, path, command="python -m specdec_kernels.train.ldlp --out x", positions=10)
    loaded = load_predictor(path, tiny)
    assert loaded.config == predictor.config and not loaded.training
    assert loaded.metadata == {"command": "python -m specdec_kernels.train.ldlp --out x", "positions": 10}
    x, f, c = torch.randn(9, tiny.config.dim), torch.randn(9, tiny.config.dim), torch.rand(9)
    assert torch.equal(loaded(x, f, c), predictor(x, f, c))


def test_length_table_counts_labels_per_bin_of_the_raw_output():
    raw = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.1, 1.2, 1.3, 1.4, 2.5, 2.6, 2.7, 2.8])
    labels = torch.tensor([0, 0, 1, 0, 1, 2, 1, 1, 3, 3, 2, 5])  # 5: past k_max, counted as k_max
    table = LengthTable.of(raw, labels, k_max=3, bins=3)
    assert len(table.edges) == 2 and 0.4 <= table.edges[0] <= 1.1 and 1.4 <= table.edges[1] <= 2.5
    assert table.counts == ((3, 1, 0, 0), (0, 3, 1, 0), (0, 0, 1, 3))
    assert [table.bin_of(float(r)) for r in raw] == [0] * 4 + [1] * 4 + [2] * 4
    assert LengthTable.of(torch.ones(10), torch.ones(10, dtype=torch.long), 3).counts == ((0, 10, 0, 0),)  # one bin


@pytest.mark.parametrize("edges, counts", [((1.0, 0.5), ((1, 0),) * 3), ((0.5,), ((1, 0),)), ((0.5,), ((1, 0), (1,))),
                                           ((0.5,), ((0, 0), (0, 0))), ((float("nan"),), ((1, 0),) * 2),
                                           ((0.5,), ((1, -1), (1, 0)))])
def test_a_bad_length_table_is_refused(edges, counts):
    with pytest.raises(ValueError, match="a length table needs"):
        LengthTable(edges, counts)


def test_the_length_table_travels_with_the_file(tiny, tmp_path):
    predictor = predictor_for(tiny, k_max=3)
    predictor.length_table = LengthTable((0.25, 1.5), ((5, 1, 0, 0), (2, 3, 1, 0), (0, 1, 2, 4)))
    path = str(tmp_path / "t.ldlp.safetensors")
    save_predictor(predictor, path, command="x")
    loaded = load_predictor(path, tiny)
    assert loaded.length_table == predictor.length_table and loaded.bin_lengths is None
    assert loaded.metadata["command"] == "x"
    for entry, message in [({"edges": [0.5]}, "damaged length table"),
                           ({"edges": [0.5], "counts": [[1, 0], [0, 1]]}, "labels 0..1, the predictor's k_max is 3"),
                           ({"edges": "x", "counts": [[1, 0, 0, 0]]}, "damaged length table")]:
        save_predictor(predictor_for(tiny, k_max=3), path, length_table=entry)
        with pytest.raises(ValueError, match=message):
            load_predictor(path, tiny)


def test_the_decoder_maps_each_bin_to_the_length_its_costs_pay_for(tiny, head, sequences, tmp_path):
    """A file with a length table: the decoder gives each bin of the raw output the length that
    planner.policy.best_chain_lengths finds under the machine's costs (here given), not the rounded one; the
    greedy output stays plain greedy's."""
    from specdec_kernels.methods import Decoder
    from specdec_kernels.planner import StepCosts, best_chain_lengths

    data = examples(sequences, *chain_labels(head, tiny.embedding, sequences, K_MAX))
    predictor = random_predictor(tiny)
    predictor.length_table = held_out_table(predictor, tiny.embedding, data)
    assert len(predictor.length_table.counts) == 8 and sum(map(sum, predictor.length_table.counts)) == len(data)
    path = str(tmp_path / "p.ldlp.safetensors")
    save_predictor(predictor, path)
    for costs in (StepCosts((6.0, 6.2, 6.4, 6.6, 6.8), 0.3, 0.1), StepCosts((6.0, 18.0, 30.0, 42.0, 54.0), 0.3, 0.1)):
        decoder = Decoder("tiny.gguf", tiny, head_path="tiny.eagle.pt", predictor_path=path, costs=costs)
        decoder._drafter = EagleDrafter(tiny, head)
        lengths = decoder.predictor.bin_lengths
        assert lengths == best_chain_lengths(predictor.length_table.counts, costs)
        out = speculative_generate(tiny, decoder.drafter, PROMPTS[0], 30, shape=ADA_SHAPES["ada"],
                                   predictor=decoder.predictor)
        assert out.tokens == generate(tiny, PROMPTS[0], 30).tokens and set(out.draft_lengths) <= set(lengths)
    assert set(lengths) == {0}  # a node costs two plain steps: no draft pays


def test_length_zero_is_a_plain_step(tiny, head):
    """A predicted length of 0 asks for DraftShape.chain(0): a tree of the root alone, so the step is a plain
    decoding step (one token) and the output is plain greedy's; chains of every length up to K_MAX keep it."""
    drafter = EagleDrafter(tiny, head)
    prompt = [1, 5, 7, 9]
    plain = generate(tiny, prompt, 20)
    out = speculative_generate(tiny, drafter, prompt, 20, shape=DraftShape.chain(0))
    assert out.tokens == plain.tokens and set(out.accepted_per_step) == {1} and set(out.draft_sizes) == {1}
    for k in range(1, K_MAX + 1):
        assert speculative_generate(tiny, drafter, prompt, 20, shape=DraftShape.chain(k)).tokens == plain.tokens


# ---------------------------------------------------------------- labels
def drafter_label(drafter, tokens, features, j, k_max):
    """Leading tokens of the drafter's greedy chain (DraftShape.chain(k_max)) after pairs 0..j that match
    x_{j+2}, x_{j+3}, ..., how many true tokens there were to compare, and the drafter's top-1 probability
    for the chain's first token (the predictor's confidence input)."""
    drafter.reset()
    hidden, log_probs = drafter.extend(tokens[1: j + 2], features[: j + 1])
    draft = drafter.grow_tree(int(tokens[j + 1]), hidden, log_probs, DraftShape.chain(k_max))
    top = float(log_probs.detach().max().exp())
    drafted, truth = draft.tokens[0, 1:].tolist(), tokens[j + 2: j + 2 + k_max].tolist()
    matched = 0
    while matched < min(len(drafted), len(truth)) and drafted[matched] == truth[matched]:
        matched += 1
    return matched, len(truth), top


def test_labels_are_the_drafters_chain_acceptance(tiny, head, sequences):
    """chain_labels (EagleHead.unrolled, batched) gives at every answer position what EagleDrafter's real chain
    draft would have accepted; positions it leaves out are those where the answer ended before a mismatch."""
    labels, confidences = chain_labels(head, tiny.embedding, sequences, K_MAX)
    drafter = EagleDrafter(tiny, head, quantize=False)
    seen = []
    for s, label, confidence in zip(sequences, labels, confidences):
        assert label.shape == confidence.shape == (s.tokens.numel() - 1,)
        assert (label[: s.answer_start - 1] == -1).all()  # prompt positions: no target continuation
        features = s.features.float()
        for j in range(s.answer_start - 1, s.tokens.numel() - 1):
            matched, available, top = drafter_label(drafter, s.tokens, features, j, K_MAX)
            assert abs(float(confidence[j]) - top) < 1e-4, f"position {j}"
            if int(label[j]) >= 0:
                assert int(label[j]) == matched, f"position {j}"
                seen.append(matched)
            else:
                assert matched == available < K_MAX, f"position {j}"
    counts = torch.bincount(torch.tensor(seen), minlength=K_MAX + 1)
    assert (counts > 0).sum() >= 3 and counts[K_MAX] > 0, f"labels too uniform to test: {counts.tolist()}"


def test_labels_depend_on_the_head(tiny, head, sequences):
    """Negative control: an untrained head's labels differ (the comparison above can fail)."""
    torch.manual_seed(5)
    other = EagleHead.from_target(tiny, torch.arange(40)).eval()
    ours, theirs = (torch.cat(chain_labels(h, tiny.embedding, sequences, K_MAX)[0]) for h in (head, other))
    assert not torch.equal(ours, theirs) and ours.clamp(min=0).sum() > theirs.clamp(min=0).sum()


def test_examples_take_the_last_accepted_token(tiny, head, sequences):
    labels, confidences = chain_labels(head, tiny.embedding, sequences, K_MAX)
    data = examples(sequences, labels, confidences)
    kept = [(s, j) for s, label in zip(sequences, labels) for j in range(label.numel()) if label[j] >= 0]
    assert torch.equal(data.confidence, torch.cat([c[label >= 0] for c, label in zip(confidences, labels)]))
    assert len(data) == len(kept) and data.features.shape == (len(kept), tiny.config.dim)
    assert data.tokens.tolist() == [int(s.tokens[j]) for s, j in kept]  # x_j, whose feature f_j decides
    assert torch.equal(data.features, torch.stack([s.features[j] for s, j in kept]).half())
    assert data.labels.min() >= 0 and data.labels.max() <= K_MAX


# ---------------------------------------------------------------- training
def test_weighted_l1_weights_under_prediction():
    assert weighted_l1(torch.tensor([1.0]), torch.tensor([3.0]), 3.0) == 6.0  # under by 2, weighted
    assert weighted_l1(torch.tensor([3.0]), torch.tensor([1.0]), 3.0) == 2.0  # over by 2
    assert weighted_l1(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0]), 3.0) == 4.0


def test_best_constant():
    assert best_constant(torch.tensor([0, 1, 1, 5]), 6) == 1
    assert best_constant(torch.tensor([6, 6, 6, 0]), 6) == 6


def test_training_lowers_the_loss(tiny, head, sequences):
    data = examples(sequences, *chain_labels(head, tiny.embedding, sequences, K_MAX))
    predictor = predictor_for(tiny)
    lines = []
    history = train(predictor, tiny.embedding, data, epochs=15, lr=3e-3, batch_size=32, log=lines.append)
    assert history[-1] < 0.8 * history[0], history
    assert len(lines) == 15 and not predictor.training
    metrics = evaluate(predictor, tiny.embedding, data, best_constant(data.labels, K_MAX))
    assert len(metrics) == 2
    for m in metrics.values():
        assert 0 <= m["exact"] <= m["within_1"] <= 1 and m["mae"] >= 0
        assert 0 <= m["accepted"] <= min(m["drafted"], float(data.labels.float().mean())) + 1e-6
    # it fits its training positions better than any fixed length
    assert metrics["predictor"]["mae"] < next(m for k, m in metrics.items() if k != "predictor")["mae"]


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("k_max", [0, -1, MAX_DRAFT_LENGTH + 1])
def test_k_max_out_of_range(tiny, head, sequences, k_max):
    with pytest.raises(ValueError, match=r"k_max must be in \[1, "):
        PredictorConfig(tiny.config.dim, k_max)
    with pytest.raises(ValueError, match=r"k_max must be in \[1, "):
        chain_labels(head, tiny.embedding, sequences[:1], k_max)


def test_predictor_for_another_model_is_refused(tiny, tmp_path):
    path = str(tmp_path / "other.ldlp.safetensors")
    save_predictor(LengthPredictor(PredictorConfig(32, K_MAX, hidden_dim=8)), path)
    with pytest.raises(ValueError, match="length predictor for dim 32, the target has dim 64"):
        load_predictor(path, tiny)


def test_inputs_of_another_width_are_refused(tiny):
    with pytest.raises(ValueError, match="embeddings and features of width 64, got 32 and 64"):
        predictor_for(tiny)(torch.randn(2, 32), torch.randn(2, 64), torch.rand(2))
    with pytest.raises(ValueError, match=r"one confidence per position: expected shape \(2,\), got \(3,\)"):
        predictor_for(tiny)(torch.randn(2, 64), torch.randn(2, 64), torch.rand(3))


@pytest.mark.parametrize("flags, message", [
    (["--k-max", "0"], "--k-max: k_max must be in [1, "),
    (["--k-max", "1000"], "--k-max: k_max must be in [1, "),
    (["--under-weight", "0.5"], "--under-weight must be at least 1"),
    (["--limit", "3"], "--limit must be at least 20"),
    (["--eval-prompts", "missing.jsonl"], "missing.jsonl: no such file"),
])
def test_training_command_refuses_bad_flags(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "p.ldlp.safetensors")] + flags)
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- decoding with the predictor
ADA_SHAPES = {"ada": DraftShape.chain(K_MAX), "eagle2-ada": DraftShape(total_tokens=8, depth=3, top_k=2)}
PROMPTS = [[1, 5, 7, 9], [3, 3, 3], [20, 11, 2, 38, 17, 6]]


@pytest.fixture(scope="module")
def trained_predictor(tiny, trained_head, sequences):
    data = examples(sequences, *chain_labels(trained_head, tiny.embedding, sequences, K_MAX))
    predictor = predictor_for(tiny)
    train(predictor, tiny.embedding, data, epochs=15, lr=3e-3, batch_size=32, under_weight=3.0, log=lambda _: None)
    return predictor


def constant_predictor(tiny, length: float) -> LengthPredictor:
    predictor = predictor_for(tiny)
    with torch.no_grad():
        predictor.w_out.weight.zero_()
        predictor.w_out.bias.fill_(length)
    return predictor


def random_predictor(tiny) -> LengthPredictor:
    """Untrained, its output scaled and shifted so that its lengths spread over 0..K_MAX."""
    predictor = predictor_for(tiny, seed=7)
    with torch.no_grad():
        predictor.w_out.weight.mul_(8.0)  # its raw outputs: mean ~0.13, std ~0.17 on the tiny target
        predictor.w_out.bias.fill_(1.0)
    return predictor


@pytest.mark.parametrize("method", ADA_SHAPES)
@pytest.mark.parametrize("which", ["random", "trained"])
def test_greedy_with_a_predictor_is_plain_greedy(tiny, head, trained_predictor, method, which):
    predictor = trained_predictor if which == "trained" else random_predictor(tiny)
    drafter = EagleDrafter(tiny, head)
    lengths = set()
    for prompt in PROMPTS:
        plain = generate(tiny, prompt, 40)
        out = speculative_generate(tiny, drafter, prompt, 40, shape=ADA_SHAPES[method], predictor=predictor)
        assert out.tokens == plain.tokens
        assert len(out.draft_lengths) == out.steps and max(out.draft_lengths) <= ADA_SHAPES[method].depth
        if method == "ada":  # a chain of k drafts: k + 1 nodes
            assert out.draft_sizes == [k + 1 for k in out.draft_lengths]
        lengths |= set(out.draft_lengths)
    assert len(lengths) >= 3, f"the predictor chose too few lengths to test: {lengths}"


def test_predictor_sees_the_last_accepted_token_and_its_feature(tiny, head, monkeypatch):
    """Each step the predictor gets (embed(x_j), f_j) for the token x_j before the step's root, the pair
    train/ldlp.py trained it on (checked against one forward over the whole output), and the drafter's
    top-1 probability for the root's first child (a probability)."""
    seen = []
    predictor = random_predictor(tiny)
    decide = OnePositionPredictor.__call__  # decoding's form of the predictor (one position per step)
    monkeypatch.setattr(OnePositionPredictor, "__call__",
                        lambda self, *inputs: (seen.append(inputs), decide(self, *inputs))[1])
    prompt = PROMPTS[2]
    out = speculative_generate(tiny, EagleDrafter(tiny, head), prompt, 30, shape=ADA_SHAPES["ada"],
                               predictor=predictor)
    sequence = prompt + out.tokens
    with torch.inference_mode():  # the cache holds inference tensors
        tiny.reset()
        _, hidden = tiny(torch.tensor([sequence]))
    emitted = 1  # the token the prefill chose
    assert len(seen) == out.steps
    for (embeds, features, confidence), accepted in zip(seen, out.accepted_per_step):
        assert isinstance(confidence, float) and 0 < confidence <= 1
        j = len(prompt) + emitted - 2  # the root is x_{j+1}, the last token emitted
        assert torch.equal(embeds.float(), tiny.embedding[sequence[j]].float())
        torch.testing.assert_close(features, hidden[0, j], atol=1e-4, rtol=1e-4)
        emitted += accepted


@pytest.mark.parametrize("method", ADA_SHAPES)
def test_predictor_saying_zero_gives_one_token_per_step(tiny, head, method):
    prompt = PROMPTS[0]
    out = speculative_generate(tiny, EagleDrafter(tiny, head), prompt, 20, shape=ADA_SHAPES[method],
                               predictor=constant_predictor(tiny, -50.0))
    assert out.tokens == generate(tiny, prompt, 20).tokens
    assert out.steps == 19 and set(out.accepted_per_step) == {1} and set(out.draft_sizes) == {1}
    assert set(out.draft_lengths) == {0}


@pytest.mark.parametrize("method", ADA_SHAPES)
def test_a_floor_of_one_turns_predicted_zeros_into_one_draft_token(tiny, head, method):
    prompt = PROMPTS[0]
    predictor = constant_predictor(tiny, -50.0)
    predictor.min_length = 1
    assert predictor.lengths(torch.randn(3, tiny.config.dim), torch.randn(3, tiny.config.dim), torch.rand(3)).tolist() == [1] * 3
    out = speculative_generate(tiny, EagleDrafter(tiny, head), prompt, 20, shape=ADA_SHAPES[method], predictor=predictor)
    assert out.tokens == generate(tiny, prompt, 20).tokens
    assert set(out.draft_lengths) == {1} and min(out.draft_sizes) >= 2


def test_the_decoder_floors_its_predictor_at_ada_min_length(tiny, tmp_path):
    from specdec_kernels.methods import ADA_MIN_LENGTH, Decoder

    path = str(tmp_path / "p.ldlp.safetensors")
    save_predictor(predictor_for(tiny), path)
    assert load_predictor(path, tiny).min_length == 0  # a policy of the decoder, not of the file
    assert Decoder("tiny.gguf", tiny, predictor_path=path).predictor.min_length == ADA_MIN_LENGTH == 1


def test_length_is_clipped_to_the_cache_room(tiny, head):
    """Near max_seq_len a predicted chain of K_MAX is cut to the free cache slots (root included)."""
    new_tokens = 12
    prompt = torch.randint(0, 40, (tiny.max_seq_len - new_tokens,), generator=torch.Generator().manual_seed(2)).tolist()
    out = speculative_generate(tiny, EagleDrafter(tiny, head), prompt, new_tokens, shape=ADA_SHAPES["ada"],
                               predictor=constant_predictor(tiny, 50.0))
    assert out.tokens == generate(tiny, prompt, new_tokens).tokens
    emitted, expected = 1, []
    for accepted in out.accepted_per_step:
        room = tiny.max_seq_len - (len(prompt) + emitted - 1)  # the cache holds the prompt and all but the root
        expected.append(min(K_MAX, room - 1))
        emitted += accepted
    assert out.draft_lengths == expected and min(expected) < K_MAX
    assert out.draft_sizes == [k + 1 for k in expected]
