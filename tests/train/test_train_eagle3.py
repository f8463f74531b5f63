"""EAGLE-3 training (train/eagle3.py) on a tiny random 8-layer target: batched prefill gives each sequence the
features of its own prefill, training lowers the loss, the chain acceptance per depth counts what it says, and the
command line refuses bad arguments and writes a head that loads."""
import itertools
import random

import pytest
import torch
from specdec_kernels.drafters import EagleHead, save_head
from specdec_kernels.drafters.eagle3_head import Eagle3Head, default_feature_layers
from specdec_kernels.models.llama import Block, ModelConfig, Transformer
from specdec_kernels.quant import W4A16Linear, dense_weight
from specdec_kernels.train import eagle3
from specdec_kernels.train.corpus import write_shard
from specdec_kernels.train.eagle import shifted, token_pairs

VOCAB, N_LAYERS = 40, 8
LAYERS = default_feature_layers(N_LAYERS)


@pytest.fixture(scope="module")
def target():
    """A random 8-layer Llama (dim 64, 4-bit blocks, peaky next-token distributions)."""
    torch.manual_seed(0)
    c = ModelConfig(dim=64, n_layers=N_LAYERS, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=VOCAB, max_seq_len=128)
    kv = c.n_kv_heads * c.head_dim

    def linear(n_out, n_in):
        return W4A16Linear.from_linear(torch.nn.Linear(n_in, n_out, bias=False), group_size=32)

    blocks = [Block(c, linear(c.dim + 2 * kv, c.dim), linear(c.dim, c.dim), linear(2 * c.hidden_dim, c.dim),
                    linear(c.dim, c.hidden_dim), torch.ones(c.dim), torch.ones(c.dim)) for _ in range(c.n_layers)]
    embedding = torch.randn(VOCAB, c.dim)
    lm_head = torch.nn.Linear(c.dim, VOCAB, bias=False)
    lm_head.weight.data = embedding * 3
    return Transformer(c, embedding, blocks, torch.ones(c.dim), lm_head)


def counting_sequences(n: int, seed: int = 0) -> list:
    """(tokens, answer start): a 3-token prompt, then an answer counting up by the prompt's first token."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        prompt = [rng.randrange(1, 5)] + [rng.randrange(VOCAB) for _ in range(2)]
        answer = [(prompt[-1] + prompt[0] * (i + 1)) % VOCAB for i in range(rng.randrange(8, 30))]
        out.append((torch.tensor(prompt + answer), 3))
    return out


def featured(target, n: int, seed: int = 0) -> list:
    sequences = [eagle3.FeatureSequence(tokens, start) for tokens, start in counting_sequences(n, seed)]
    eagle3.prefill_features(target, sequences, LAYERS)
    return sequences


def new_head(target, seed: int = 0) -> Eagle3Head:
    torch.manual_seed(seed)
    return Eagle3Head.from_target(target, torch.arange(VOCAB), LAYERS)


# ---------------------------------------------------------------- features
def test_batched_prefill_equals_each_sequence_alone(target):
    pairs = counting_sequences(6, seed=1)
    batched, alone = ([eagle3.FeatureSequence(tokens, start) for tokens, start in pairs] for _ in range(2))
    eagle3.prefill_features(target, batched, LAYERS, tokens_per_batch=10_000)  # one right-padded batch
    eagle3.prefill_features(target, alone, LAYERS, tokens_per_batch=1)         # one sequence a forward
    assert len({s.tokens.numel() for s in batched}) > 1  # rows of several lengths: padding in the batch
    for b, a in zip(batched, alone):
        assert b.streams.shape == (a.tokens.numel(), 3 * 64) and b.hidden.shape == (a.tokens.numel(), 64)
        assert torch.equal(b.streams, a.streams) and torch.equal(b.hidden, a.hidden)
    _, hidden, streams = target(pairs[0][0][None], capture=LAYERS)  # after both, a fresh prefill (cache restored)
    assert torch.equal(alone[0].streams, streams[0].half()) and torch.equal(alone[0].hidden, hidden[0].half())
    assert target.max_seq_len == 128 and target.cache_lens.shape == (1,)


def test_split_holds_out_by_key_and_caps_training_tokens():
    sequences, starts = zip(*counting_sequences(40))
    keys = list(range(40))
    training, held_out = eagle3.split_corpus(list(sequences), list(starts), keys)
    assert [s.tokens for s in held_out] == [sequences[0], sequences[20]] and len(training) == 38
    capped, _ = eagle3.split_corpus(list(sequences), list(starts), keys, max_tokens=50)
    answers = [s.tokens.numel() - s.answer_start for s in capped]
    assert sum(answers[:-1]) < 50 <= sum(answers)


# ---------------------------------------------------------------- training
def weighted_loss(head, target, sequences, unroll=3) -> float:
    rows = dense_weight(target.lm_head, rows=head.draft_to_target)
    with torch.no_grad():
        losses = eagle3.token_losses(head, rows, eagle3.feature_pairs(target.embedding, sequences), unroll)
    return sum(eagle3.STEP_DECAY ** u * loss for u, loss in enumerate(losses)).item()


def test_token_losses_match_the_shifted_targets(target):
    """Step u's loss is the cross-entropy at pair j against the target's distribution at j + 1 + u."""
    sequences, head = featured(target, 3), new_head(target)
    batch = eagle3.feature_pairs(target.embedding, sequences)
    embeds, streams, targets, mask, _ = batch
    rows = dense_weight(target.lm_head, rows=head.draft_to_target)
    with torch.no_grad():
        losses = eagle3.token_losses(head, rows, batch, 3)
        for step, (_, logits) in enumerate(head.unrolled(embeds, streams, 3)):
            m = shifted(mask, step)
            p = torch.softmax(shifted(targets, step)[m] @ rows.T, -1)
            expected = -(p * torch.log_softmax(logits[m], -1)).sum(-1).mean()
            assert torch.allclose(losses[step], expected, rtol=1e-5), step


def test_training_lowers_the_loss(target):
    sequences, head = featured(target, 24), new_head(target)
    rows = dense_weight(target.lm_head, rows=head.draft_to_target)
    before = weighted_loss(head, target, sequences)
    history = eagle3.train(head, rows, target.embedding, sequences, epochs=6, lr=3e-3, tokens_per_batch=128,
                           log=lambda _: None)
    after = weighted_loss(head, target, sequences)
    uniform = sum(eagle3.STEP_DECAY ** u for u in range(3)) * torch.log(torch.tensor(float(VOCAB))).item()
    assert all(torch.isfinite(torch.tensor(history))) and after < 0.5 * before, (before, after, history)
    assert after < uniform  # better than knowing nothing, not only less overconfident than at the start
    assert not head.training


def test_a_time_budget_stops_training(target):
    sequences, head, notes = featured(target, 24), new_head(target), []
    rows = dense_weight(target.lm_head, rows=head.draft_to_target)
    eagle3.train(head, rows, target.embedding, sequences, epochs=3, tokens_per_batch=64, minutes=1e-9,
                 log=notes.append)
    assert sum(line.startswith("epoch") for line in notes) == 1 and any("minutes spent" in line for line in notes)


# ---------------------------------------------------------------- evaluation
def test_chain_hits_count_leading_matches():
    """Root j drafts x_{j+2}, x_{j+3}, ...: a depth counts only while every draft before it was right."""
    next_tokens = torch.tensor([[10, 11, 12, 13, -1]])
    roots = torch.tensor([[True, True, False, True, True]])
    truth = [shifted(next_tokens, u, -1) for u in range(3)]
    assert eagle3.chain_hits(truth, next_tokens, roots).tolist() == [3, 2, 2]  # only known tokens match
    wrong_second = [truth[0], torch.full_like(next_tokens, 7), truth[2]]
    assert eagle3.chain_hits(wrong_second, next_tokens, roots).tolist() == [3, 0, 0]
    one_miss = [truth[0].clone(), truth[1], truth[2]]
    one_miss[0][0, 1] = 0
    assert eagle3.chain_hits(one_miss, next_tokens, roots).tolist() == [2, 1, 1]


def test_a_drafter_of_the_truth_is_always_accepted(target):
    sequences = featured(target, 5)

    def truth(group, depth):
        _, _, next_tokens = token_pairs(target.embedding, group)
        return [shifted(next_tokens, u, -1) for u in range(depth)]

    roots = sum(s.tokens.numel() - s.answer_start - 5 for s in sequences)  # those with 5 known next tokens
    metrics = eagle3.evaluate({"oracle": truth}, target.embedding, sequences, depth=5)["oracle"]
    assert metrics["depth_rates"] == [1.0] * 5 and metrics["chain_tokens"] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert metrics["positions"] == roots and metrics["alpha_1"] == 1.0


def test_rates_of_both_heads_fall_with_depth_and_start_at_top1(target):
    sequences, head = featured(target, 12), new_head(target)
    rows = dense_weight(target.lm_head, rows=head.draft_to_target)
    eagle3.train(head, rows, target.embedding, sequences, epochs=2, lr=3e-3, tokens_per_batch=128, log=lambda _: None)
    torch.manual_seed(0)
    eagle_head = EagleHead.from_target(target, torch.arange(VOCAB)).eval()
    drafters = {"eagle3": lambda group, depth: eagle3.eagle3_drafts(head, target.embedding, group, depth),
                "eagle": lambda group, depth: eagle3.eagle_drafts(eagle_head, target.embedding, group, depth)}
    results = eagle3.evaluate(drafters, target.embedding, sequences, depth=4, tokens_per_batch=64)
    for metrics in results.values():
        rates = metrics["depth_rates"]
        assert all(1 >= a >= b >= 0 for a, b in itertools.pairwise(rates)) and rates[0] > 0
    assert results["eagle3"]["positions"] == results["eagle"]["positions"]
    # depth 1 by hand: the teacher-forced head's top-1 at the roots
    embeds, streams, _, mask, next_tokens = eagle3.feature_pairs(target.embedding, sequences)
    with torch.no_grad():
        top1 = head(embeds, streams)[1].argmax(-1)
    roots = mask & (shifted(next_tokens, 3, -1) >= 0)
    assert results["eagle3"]["alpha_1"] == pytest.approx((top1 == next_tokens)[roots].float().mean().item())
    assert "depth" in eagle3.table({"held-out": results})


# ---------------------------------------------------------------- command line
@pytest.mark.parametrize("args, message", [
    (["--unroll", "0"], "--unroll: must be at least 1, got 0"),
    (["--lr", "-1"], "--lr: must be positive"),
    (["--corpus", "nowhere"], "--corpus nowhere: no corpus shards"),
])
def test_cli_refuses_bad_arguments(tmp_path, capsys, args, message):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_shard(str(corpus / "shard_0000.safetensors"), [torch.tensor([1, 2, 3])], [1], [5], "tiny")
    with pytest.raises(SystemExit) as exit_:
        eagle3.main(["--corpus", str(corpus), "--out", str(tmp_path / "head")] + args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cli_trains_and_writes_a_head_that_loads(target, tmp_path, monkeypatch):
    from specdec_kernels import drafters, models
    from specdec_kernels.drafters.eagle3_file import load_eagle3

    sequences, starts = zip(*counting_sequences(40))
    write_shard(str(tmp_path / "shard_0000.safetensors"), list(sequences), list(starts), list(range(40)), "tiny")
    torch.manual_seed(0)
    save_head(EagleHead.from_target(target, torch.arange(VOCAB)), str(tmp_path / "tiny.eagle.safetensors"))
    monkeypatch.setattr(models, "load_model", lambda path: target)
    monkeypatch.setattr(drafters, "default_head_path", lambda path: str(tmp_path / "tiny.eagle.safetensors"))
    argv = ["--corpus", str(tmp_path), "--out", str(tmp_path / "head"), "--model", "tiny.gguf", "--unroll", "2",
            "--tokens-per-batch", "128", "--eval-prompts", ""]
    assert eagle3.main(argv) == 0
    head = load_eagle3(str(tmp_path / "head"), target)
    assert head.metadata["command"] == "python -m specdec_kernels.train.eagle3 " + " ".join(argv)
    held_out = head.metadata["held_out"]
    assert set(held_out) == {"EAGLE-3", "EAGLE-1/2"} and held_out["EAGLE-3"]["positions"] > 0
    assert head.metadata["answer_tokens"] == sum(s.numel() - a for k, (s, a) in enumerate(zip(sequences, starts))
                                                 if k % 20)
    assert head.metadata["unseen_prompts"] is None
