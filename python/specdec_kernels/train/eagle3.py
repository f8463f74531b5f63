"""Train an EAGLE-3 draft head (drafters/eagle3_head.py, docs/design.md 4.10) on the target's answer corpus.

    python -m specdec_kernels.train.eagle3 --corpus DIR --out FOLDER [--model PATH.gguf] [--draft-vocab 8192]
        [--epochs 1] [--unroll 3] [--lr 1e-3] [--tokens-per-batch 1024] [--max-tokens N] [--minutes M] [--bf16]
        [--eval-prompts FILE]

1. The corpus (train/corpus.py) less 5% of its conversations, held out by key; --max-tokens caps the answer
   tokens trained on.
2. Features by batched prefill of the target: the residual streams entering the head's three feature layers
   (its input) and the final-norm feature (the loss's target), float16 in memory.
3. The draft vocabulary: the most frequent answer tokens.
4. The head learns tokens only: at unrolled step u (training-time test) cross-entropy against the target's
   distribution renormalised to the draft vocabulary, on answer positions, steps weighted 0.8^u.
5. Held-out conversations and the target's answers to the end-to-end prompts' first turns (no topics or
   templates in common with the corpus) report, beside the shipped EAGLE-1/2 head on the same positions, the
   chain acceptance per depth: P(the head's first d greedy drafts from a teacher-forced root all equal the
   target's next d tokens), and the tokens per target forward of a chain of d drafts, 1 + the sum of those.
"""
import argparse
import random
import sys
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from specdec_kernels.extras import progress_bar
from specdec_kernels.quant import dense_weight

from .eagle import (
    Sequence,
    batches,
    draft_vocabulary,
    eval_prompts_path,
    fit,
    padded,
    pair_batch,
    shifted,
    token_pairs,
    unseen_prompt_sequences,
)

HELD_OUT_EVERY = 20  # one conversation in 20 (by key) is held out
STEP_DECAY = 0.8     # EAGLE-3's weight of unrolled step u: 0.8^u
EVAL_DEPTH = 5
# Training positions per step: smaller steps learn more per second. On 61k positions (5 epochs, bfloat16, one
# thread) 1024 reached held-out alpha_1 0.32 where 4096 reached 0.24; it runs at 0.83x their positions/s.
TOKENS_PER_BATCH = 1024
UNSEEN_NEW_TOKENS = 256  # as long as the corpus' answers
# Prefill rows per forward: on CPU one ~300-token row is fastest (930 tokens/s a thread, against 670 for rows of
# 2048 tokens together), so only short rows share a forward.
PREFILL_TOKENS = 512


@dataclass
class FeatureSequence:
    tokens: torch.Tensor                 # int64 [n]: prompt then answer
    answer_start: int                    # index of the first answer token
    streams: torch.Tensor | None = None  # float16 [n, 3 dim]: the streams entering the feature layers
    hidden: torch.Tensor | None = None   # float16 [n, dim]: the target's final-norm feature

    def as_eagle(self) -> Sequence:
        """The sequence as the EAGLE-1/2 head reads it (final-norm features)."""
        return Sequence(self.tokens, self.hidden, self.answer_start)


# ---------------------------------------------------------------- data
def split_corpus(sequences: list, answer_starts: list, keys: list, max_tokens: int | None = None):
    """-> (training, held_out) FeatureSequences without features. One conversation in HELD_OUT_EVERY is held out,
    by key (stable as the corpus grows); training takes conversations in key order up to max_tokens answer tokens."""
    training, held_out, answer_tokens = [], [], 0
    for key, tokens, start in sorted(zip(keys, sequences, answer_starts), key=lambda item: item[0]):
        if key % HELD_OUT_EVERY == 0:
            held_out.append(FeatureSequence(tokens, start))
        elif max_tokens is None or answer_tokens < max_tokens:
            training.append(FeatureSequence(tokens, start))
            answer_tokens += tokens.numel() - start
    return training, held_out


@torch.inference_mode()
def prefill_features(target, sequences: list, feature_layers, tokens_per_batch: int = PREFILL_TOKENS) -> float:
    """Fill each FeatureSequence's streams and hidden by right-padded batched prefill of like-length rows (causal
    attention keeps each row's padding, at its end, out of its positions). -> prefill tokens per second."""
    capacity, prefilled, started = target.max_seq_len, 0, time.perf_counter()
    try:
        for group in progress_bar(batches(sequences, tokens_per_batch, random.Random(0)), desc="prefill"):
            length = max(s.tokens.numel() for s in group)
            tokens = torch.stack([F.pad(s.tokens, (0, length - s.tokens.numel())) for s in group])
            target.setup_cache(len(group), length)
            _, hidden, streams = target(tokens, logits_to_keep=1, capture=tuple(sorted(feature_layers)))
            for row, s in enumerate(group):
                n = s.tokens.numel()
                s.streams, s.hidden = streams[row, :n].half(), hidden[row, :n].half()
                if not (torch.isfinite(s.streams).all() and torch.isfinite(s.hidden).all()):
                    raise OverflowError("a residual stream exceeds float16's range")
            prefilled += sum(s.tokens.numel() for s in group)
    finally:
        target.setup_cache(1, capacity)
    return prefilled / (time.perf_counter() - started)


def feature_pairs(embedding: torch.Tensor, sequences: list):
    """Right-padded pair tensors (pair j = (x_{j+1}, fused streams at j)): embeds [B, L, dim], streams
    [B, L, 3 dim], final-norm targets [B, L, dim] (pair j's next distribution is the target's at j + 1), the
    loss mask and next tokens [B, L] (train.eagle.token_pairs)."""
    embeds, mask, next_tokens = token_pairs(embedding, sequences)
    streams = padded([s.streams[:-1] for s in sequences], embeds.shape[1])
    targets = padded([s.hidden[1:] for s in sequences], embeds.shape[1])
    return embeds, streams, targets, mask, next_tokens


# ---------------------------------------------------------------- training
def token_losses(head, target_rows: torch.Tensor, batch, unroll: int) -> list:
    """Per unrolled step u: the cross-entropy of the head's draft distribution against the target's over the
    draft vocabulary (softmax of target_rows @ the final-norm feature: the target's full softmax renormalised),
    on answer positions. Pair k of the mask is drafted at step u by pair k - u (k >= u), whose target is the
    target's distribution at k + 1, the same at every step: computed once."""
    embeds, streams, targets, mask, _ = batch
    rows, pairs = mask.nonzero(as_tuple=True)
    with torch.no_grad():
        target_p = torch.softmax(targets[rows, pairs] @ target_rows.T, -1)
    out = []
    for step, (_, logits) in enumerate(head.unrolled(embeds, streams, unroll)):
        drafted = pairs >= step
        out.append(F.cross_entropy(logits[rows[drafted], pairs[drafted] - step], target_p[drafted]))
    return out


def train(head, target_rows: torch.Tensor, embedding: torch.Tensor, sequences: list, epochs: int = 1,
          unroll: int = 3, lr: float = 1e-3, tokens_per_batch: int = TOKENS_PER_BATCH, bf16: bool = False,
          minutes: float | None = None, seed: int = 0, log=print) -> list:
    """train.eagle.fit on token_losses, steps weighted STEP_DECAY^u (normalised); -> the mean loss per epoch."""
    weights = torch.tensor([STEP_DECAY ** u for u in range(unroll)])
    weights = weights / weights.sum()
    pairs, started = 0, time.perf_counter()

    def step_loss(group):
        nonlocal pairs
        pairs += sum(s.tokens.numel() - 1 for s in group)
        per_step = token_losses(head, target_rows, feature_pairs(embedding, group), unroll)
        return sum(w * loss for w, loss in zip(weights, per_step)), {f"step{u}": f"{loss.item():.3f}"
                                                                     for u, loss in enumerate(per_step)}

    history = fit(head, sequences, step_loss, epochs, lr, tokens_per_batch, seed, bf16, minutes, log)
    log(f"training: {pairs / (time.perf_counter() - started):.0f} positions/s")
    return history


# ---------------------------------------------------------------- evaluation
def eagle3_drafts(head, embedding: torch.Tensor, group: list, depth: int) -> list:
    """The EAGLE-3 head's greedy drafts (target ids [B, L]) at depths 1..depth from each teacher-forced root."""
    embeds, streams, *_ = feature_pairs(embedding, group)
    return [head.draft_to_target[logits.argmax(-1)] for _, logits in head.unrolled(embeds, streams, depth)]


def eagle_drafts(head, embedding: torch.Tensor, group: list, depth: int) -> list:
    """The same for an EAGLE-1/2 head (drafters.EagleHead), which reads final-norm features."""
    embeds, features, *_ = pair_batch(head, embedding, [s.as_eagle() for s in group])
    return [head.draft_to_target[logits.argmax(-1)] for _, logits in head.unrolled(embeds, features, depth)]


def chain_hits(drafts: list, next_tokens: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
    """drafts[u] [B, L]: the draft at depth u + 1 from root pair j (of x_{j+2+u}); roots [B, L]: the pairs
    counted. -> int64 [len(drafts)]: at how many roots the first d drafts all equal the true tokens, d = 1, 2...
    (a token past the sequence's end is never matched)."""
    alive, hits = roots.clone(), []
    for step, draft in enumerate(drafts):
        truth = shifted(next_tokens, step, -1)
        alive &= (draft == truth) & (truth >= 0)
        hits.append(int(alive.sum()))
    return torch.tensor(hits)


def acceptance(hits: torch.Tensor, positions: int) -> dict:
    rates = (hits / max(positions, 1)).tolist()
    return {"alpha_1": rates[0], "depth_rates": rates, "chain_tokens": (1 + torch.tensor(rates).cumsum(0)).tolist(),
            "positions": positions}


@torch.no_grad()
def evaluate(drafters: dict, embedding: torch.Tensor, sequences: list, depth: int = EVAL_DEPTH,
             tokens_per_batch: int = 4096) -> dict:
    """drafters: name -> drafts(group, depth) (eagle3_drafts / eagle_drafts with their head bound). Roots are
    the answer pairs whose next `depth` tokens are known, the same for every drafter. -> name -> acceptance."""
    hits, positions = {name: torch.zeros(depth, dtype=torch.long) for name in drafters}, 0
    for group in batches(sequences, tokens_per_batch, random.Random(0)):
        _, mask, next_tokens = token_pairs(embedding, group)
        roots = mask & (shifted(next_tokens, depth - 1, -1) >= 0)
        positions += int(roots.sum())
        for name, drafts in drafters.items():
            hits[name] += chain_hits(drafts(group, depth), next_tokens, roots)
    return {name: acceptance(h, positions) for name, h in hits.items()}


def table(results: dict) -> str:
    """results: split -> drafter -> acceptance -> per depth d, each drafter's depth-d rate and the tokens per
    forward of its chain of d drafts."""
    cells = [(f"{split} {name}", metrics) for split, by_name in results.items() for name, metrics in by_name.items()]
    roots = ", ".join(f"{split} {next(iter(by_name.values()))['positions']}" for split, by_name in results.items())
    lines = [(f"chain acceptance (roots: {roots}): rate = P(the first d drafts all right), tokens per forward = "
              "1 + the rates up to d"),
             "depth" + "".join(f" | {title:<18}" for title, _ in cells),
             "     " + f" | {'rate   tokens':<18}" * len(cells)]
    for d in range(len(cells[0][1]["depth_rates"])):
        lines.append(f"{d + 1:>5}" + "".join(f" | {m['depth_rates'][d]:.3f}  {m['chain_tokens'][d]:<11.2f}"
                                             for _, m in cells))
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv):
    from .corpus import shard_paths

    parser = argparse.ArgumentParser(prog="python -m specdec_kernels.train.eagle3", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="the answer corpus' folder (train/corpus.py)")
    parser.add_argument("--out", required=True, help="the head's folder (config.json + model.safetensors)")
    parser.add_argument("--model", help="the target's GGUF file (default: the embedded model)")
    parser.add_argument("--draft-vocab", type=at_least_one, default=8192)
    parser.add_argument("--epochs", type=at_least_one, default=1)
    parser.add_argument("--unroll", type=at_least_one, default=3, help="draft steps trained (training-time test)")
    parser.add_argument("--lr", type=positive, default=1e-3)
    parser.add_argument("--tokens-per-batch", type=at_least_one, default=TOKENS_PER_BATCH)
    parser.add_argument("--max-tokens", type=at_least_one, help="train on at most this many answer tokens")
    parser.add_argument("--minutes", type=positive, help="stop training after this long (the cosine decay follows)")
    parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    parser.add_argument("--eval-prompts", help="also report acceptance on the target's answers to these prompts' "
                        "first turns (default: the packaged end-to-end prompts; '' to skip)")
    args = parser.parse_args(argv)
    if not shard_paths(args.corpus):
        parser.error(f"--corpus {args.corpus}: no corpus shards (shard_*.safetensors) there")
    args.eval_prompts = eval_prompts_path(parser, args.eval_prompts)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from specdec_kernels.bench.e2e import first_turns
    from specdec_kernels.drafters import default_head_path, load_head
    from specdec_kernels.drafters.eagle3_file import save_eagle3
    from specdec_kernels.drafters.eagle3_head import Eagle3Head, default_feature_layers
    from specdec_kernels.engines.transformers import load_tokenizer
    from specdec_kernels.models import embedded_model_path, load_model

    from .corpus import read_corpus

    started = time.time()
    path = args.model or embedded_model_path()
    target = load_model(path)
    training, held_out = split_corpus(*read_corpus(args.corpus), max_tokens=args.max_tokens)
    answer_tokens = sum(s.tokens.numel() - s.answer_start for s in training)
    print(f"{len(training)} training conversations ({answer_tokens} answer tokens), {len(held_out)} held out; "
          f"{torch.get_num_threads()} threads")
    layers = default_feature_layers(target.config.n_layers)
    rate = prefill_features(target, training + held_out, layers)
    print(f"prefill: {rate:.0f} tokens/s ({time.time() - started:.0f} s so far)")

    head = Eagle3Head.from_target(target, draft_vocabulary(training, args.draft_vocab), layers)
    covered = torch.isin(torch.cat([s.tokens[s.answer_start:] for s in held_out]), head.draft_to_target)
    print(f"draft vocabulary {head.config.vocab_size}: covers {covered.float().mean():.1%} of held-out answer tokens")
    target_rows = dense_weight(target.lm_head, rows=head.draft_to_target)
    history = train(head, target_rows, target.embedding, training, args.epochs, args.unroll, args.lr,
                    args.tokens_per_batch, args.bf16, args.minutes)

    drafters = {"EAGLE-3": lambda group, depth: eagle3_drafts(head, target.embedding, group, depth)}
    shipped = default_head_path(path)
    if shipped:
        eagle_head = load_head(shipped, target)
        drafters["EAGLE-1/2"] = lambda group, depth: eagle_drafts(eagle_head, target.embedding, group, depth)
    else:
        print(f"no shipped EAGLE-1/2 head for {path}: nothing to compare with")
    results = {"held-out": evaluate(drafters, target.embedding, held_out)}
    if args.eval_prompts:
        tokenizer = load_tokenizer(path)
        answers = unseen_prompt_sequences(target, tokenizer, first_turns(args.eval_prompts), UNSEEN_NEW_TOKENS, 32)
        unseen = [FeatureSequence(s.tokens, s.answer_start) for s in answers]
        prefill_features(target, unseen, layers)
        results["unseen"] = evaluate(drafters, target.embedding, unseen)
    print(table(results))
    minutes = (time.time() - started) / 60
    save_eagle3(head, args.out, target_vocab=target.config.vocab_size,
                command=" ".join(["python -m specdec_kernels.train.eagle3"] + argv), held_out=results["held-out"],
                unseen_prompts=results.get("unseen"), eval_prompts=str(args.eval_prompts), losses=history,
                answer_tokens=answer_tokens, minutes=minutes)
    print(f"wrote {args.out} after {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
