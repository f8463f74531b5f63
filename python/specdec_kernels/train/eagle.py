"""Train an EAGLE draft head for a GGUF target on data the target generates itself (docs/design.md 4.1).

    python -m specdec_kernels.train.eagle --out heads/NAME.eagle.safetensors [--model PATH.gguf|DIR]
        [--max-new-tokens 160] [--epochs 8] [--draft-vocab 8192] [--data CACHE.safetensors]

1. The target (our runner, batched, greedy) answers the conversations of train/prompts.py; every position's
   final-norm feature is kept (a second round builds on the first round's answers).
2. The draft vocabulary: the most frequent tokens of the answers.
3. The head learns f_{j+1} from (x_{j+1}, f_j):
   SmoothL1 on the feature + CE against the target's distribution over the draft vocabulary, uniform noise
   on the input features; loss on answer positions only. `--unroll U` adds U - 1 steps on the head's own
   features, fed as the drafter feeds them at depth 1, 2, ... (training-time test).
4. Held-out prompts (5%) report alpha_1 (the draft's top-1 = the target's next token), top-k recall and the
   expected tokens per step of a chain of 3 drafts; so do the target's answers to the end-to-end prompts'
   first turns (`--eval-prompts`, after every epoch too): the random split shares topics and templates with
   the training data and reads high, so the end-to-end prompts are the honest figure (docs/notes.md).
"""
import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from specdec_kernels.bench.e2e import DEFAULT_PROMPTS, first_turns
from specdec_kernels.drafters import EagleHead, load_head, save_head
from specdec_kernels.extras import optional_imports, progress_bar


@dataclass
class Sequence:
    tokens: torch.Tensor    # int64 [n]: prompt then answer
    features: torch.Tensor  # float16 [n, dim]: the target's final-norm feature at each position
    answer_start: int       # index of the first answer token


# ---------------------------------------------------------------- data from the target
@torch.inference_mode()
def generate_batch(model, prompts: list, max_new_tokens: int, stop_tokens=()) -> list:
    """Greedy answers for several prompts at once -> [Sequence]. Prompts are right-padded in one prefill
    (padding sits beyond each row's cache length and is overwritten); rows are independent (batch-invariant
    kernels), so each answer is the one single-sequence decoding gives."""
    batch, lengths = len(prompts), [len(p) for p in prompts]
    capacity = model.max_seq_len
    try:
        model.setup_cache(batch, max(lengths) + max_new_tokens + 1)
        return _decode_batch(model, prompts, lengths, max_new_tokens, set(stop_tokens))
    finally:
        model.setup_cache(1, capacity)


def _decode_batch(model, prompts, lengths, max_new_tokens, stops) -> list:
    batch = len(prompts)
    padded = torch.tensor([p + [p[-1]] * (max(lengths) - len(p)) for p in prompts])
    logits, hidden = model(padded)
    model.cache_lens.copy_(torch.tensor(lengths))
    rows = torch.arange(batch)
    last = torch.tensor(lengths) - 1
    features = [[hidden[b, : lengths[b]]] for b in range(batch)]
    answers = [[] for _ in range(batch)]
    next_tokens = logits[rows, last].argmax(-1)
    done = [False] * batch
    for _ in range(max_new_tokens):
        for b in range(batch):
            if not done[b]:
                answers[b].append(int(next_tokens[b]))
        logits, hidden = model(next_tokens[:, None])
        model.commit(1)
        for b in range(batch):
            if not done[b]:
                features[b].append(hidden[b])
                done[b] = answers[b][-1] in stops or len(answers[b]) == max_new_tokens
        if all(done):
            break
        next_tokens = logits[:, 0].argmax(-1)
    return [Sequence(torch.tensor(prompts[b] + answers[b]), torch.cat(features[b]).half(), lengths[b])
            for b in range(batch)]


def collect(model, tokenizer, conversations: list, max_new_tokens: int, batch_size: int, desc: str) -> list:
    """-> [(messages, Sequence)]; conversations are sorted by prompt length so batches pad little."""
    from specdec_kernels.engines.transformers import chat_prompt_ids

    rendered = sorted(((chat_prompt_ids(tokenizer, m), m) for m in conversations), key=lambda item: len(item[0]))
    out = []
    for i in progress_bar(range(0, len(rendered), batch_size), desc=desc):
        chunk = rendered[i: i + batch_size]
        sequences = generate_batch(model, [ids for ids, _ in chunk], max_new_tokens, [tokenizer.eos_token_id])
        out += [(messages, seq) for (_, messages), seq in zip(chunk, sequences)]
    return out


def unseen_prompt_sequences(model, tokenizer, turns: list, max_new_tokens: int, batch_size: int) -> list:
    """The target's answers to end-to-end prompts' first turns (left out of round one): acceptance on them
    predicts decoding; the random held-out split shares topics and templates with training."""
    conversations = [[{"role": "user", "content": turn}] for turn in turns]
    return [s for _, s in collect(model, tokenizer, conversations, max_new_tokens, batch_size, "unseen prompts")]


def cached_sequences(path, make) -> list:
    """The sequences saved at `path` if that file exists, else make()'s (saved to `path` when one is given).
    The file is safetensors (no pickle): the sequences' tokens and features concatenated, with their lengths."""
    if path and os.path.exists(path):
        sequences = read_sequences(path)
        print(f"read {len(sequences)} sequences from {path}")
        return sequences
    sequences = make()
    if path:
        with optional_imports():
            from safetensors.torch import save_file
        save_file({"tokens": torch.cat([s.tokens for s in sequences]),
                   "features": torch.cat([s.features for s in sequences]),
                   "lengths": torch.tensor([s.tokens.numel() for s in sequences]),
                   "answer_start": torch.tensor([s.answer_start for s in sequences])}, path)
    return sequences


def read_sequences(path: str) -> list:
    with optional_imports():
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    try:
        saved = load_file(path)
        lengths = saved["lengths"].tolist()
        if not saved["tokens"].numel() == saved["features"].shape[0] == sum(lengths) or min(lengths, default=0) < 0:
            raise ValueError("its lengths do not add up to its tokens and features")
    except (SafetensorError, KeyError, ValueError) as err:
        raise ValueError(f"{path} is not a sequence cache of this version ({err}); delete it to regenerate") from err
    return [Sequence(tokens, features, start) for tokens, features, start in
            zip(saved["tokens"].split(lengths), saved["features"].split(lengths), saved["answer_start"].tolist())]


def eval_prompts_path(parser, value):
    """--eval-prompts: the packaged end-to-end prompts when not given, '' to skip; a missing file is a usage error."""
    if value is None:
        return DEFAULT_PROMPTS
    if value and not os.path.exists(value):
        parser.error(f"--eval-prompts {value}: no such file")
    return value


def draft_vocabulary(sequences: list, size: int) -> torch.Tensor:
    """The `size` most frequent answer tokens, in target id order."""
    counts = torch.zeros(int(max(int(s.tokens.max()) for s in sequences)) + 1, dtype=torch.long)
    for s in sequences:
        counts += torch.bincount(s.tokens[s.answer_start:], minlength=counts.numel())
    return counts.topk(min(size, int((counts > 0).sum()))).indices.sort().values


# ---------------------------------------------------------------- training
def pair_batch(head: EagleHead, embedding: torch.Tensor, sequences: list):
    """Right-padded pair tensors for sequences: embeds, features, feature targets [B, L, dim], the loss
    mask [B, L] (answer positions: pair j predicts x_{j+2}, j >= answer_start - 1) and next tokens [B, L]."""
    embeds, mask, next_tokens = token_pairs(embedding, sequences)
    features = padded([s.features[:-1] for s in sequences], embeds.shape[1])
    targets = padded([s.features[1:] for s in sequences], embeds.shape[1])
    return embeds, features, targets, mask, next_tokens


def token_pairs(embedding: torch.Tensor, sequences: list):
    """The token side of pair_batch: embeds [B, L, dim] (pair j reads x_{j+1}), the loss mask [B, L] and the
    next tokens [B, L] (x_{j+2}, -1 where there is none); L is the longest sequence's length - 1."""
    embeds = padded([embedding[s.tokens[1:]] for s in sequences])
    mask = torch.zeros(embeds.shape[:2], dtype=torch.bool)
    next_tokens = torch.full(embeds.shape[:2], -1, dtype=torch.long)
    for b, s in enumerate(sequences):
        n = s.tokens.numel() - 1
        mask[b, s.answer_start - 1: n] = True
        next_tokens[b, : n - 1] = s.tokens[2:]
    return embeds, mask, next_tokens


def padded(rows: list, length: int = 0) -> torch.Tensor:
    """Tensors [n_i, ...] -> float32 [B, max(length, n_i), ...], zeros after each row's n_i."""
    out = torch.zeros(len(rows), max([length] + [r.shape[0] for r in rows]), *rows[0].shape[1:])
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out


def shifted(x: torch.Tensor, step: int, fill=0) -> torch.Tensor:
    """x [B, L, ...] moved `step` rows earlier along L, rows of `fill` at the end."""
    return torch.cat([x[:, step:], x.new_full((x.shape[0], step, *x.shape[2:]), fill)], 1) if step else x


def losses(head: EagleHead, batch, noise: float, ce_weight: float, unroll: int = 1):
    """Mean over the unrolled steps (EagleHead.unrolled) of SmoothL1(f', f) + ce_weight * CE; step u's pair j
    predicts f_{j+1+u}, the target of pair j + u."""
    embeds, features, targets, mask, _ = batch
    if noise > 0:
        features = features + (torch.rand_like(features) * 2 - 1) * noise
    feature_loss = token_loss = 0.0
    for step, (predicted, logits) in enumerate(head.unrolled(embeds, features, unroll)):
        step_mask, step_targets = shifted(mask, step), shifted(targets, step)
        with torch.no_grad():
            target_p = torch.softmax(step_targets[step_mask] @ head.lm_rows.T, -1)
        feature_loss = feature_loss + F.smooth_l1_loss(predicted[step_mask], step_targets[step_mask]) / unroll
        token_loss = token_loss - (target_p * torch.log_softmax(logits[step_mask], -1)).sum(-1).mean() / unroll
    return feature_loss + ce_weight * token_loss, feature_loss, token_loss


def batches(sequences: list, tokens_per_batch: int, rng: random.Random) -> list:
    """Sequences of similar length together, about tokens_per_batch positions per batch, shuffled."""
    order = sorted(sequences, key=lambda s: s.tokens.numel())
    out, current = [], []
    for s in order:
        if current and (len(current) + 1) * s.tokens.numel() > tokens_per_batch:
            out.append(current)
            current = []
        current.append(s)
    out.append(current)
    rng.shuffle(out)
    return out


def train(head: EagleHead, embedding: torch.Tensor, sequences: list, epochs: int, lr: float = 1e-3,
          tokens_per_batch: int = 4096, noise: float = 0.1, ce_weight: float = 0.1, seed: int = 0,
          bf16: bool = False, unroll: int = 1, log=print, after_epoch=None) -> list:
    """AdamW with a cosine schedule (5% warm-up); returns the mean loss of each epoch. unroll > 1 also trains
    on the head's own features for unroll - 1 further steps (EagleHead.unrolled). after_epoch(), if given,
    returns a note appended to each epoch's log line (e.g. acceptance on unseen prompts)."""
    def step_loss(group):
        loss, feature_loss, token_loss = losses(head, pair_batch(head, embedding, group), noise, ce_weight, unroll)
        return loss, {"feature": f"{feature_loss.item():.3f}", "token": f"{token_loss.item():.3f}"}

    return fit(head, sequences, step_loss, epochs, lr, tokens_per_batch, seed, bf16, log=log, after_epoch=after_epoch)


def fit(head: torch.nn.Module, sequences: list, step_loss, epochs: int, lr: float, tokens_per_batch: int,
        seed: int = 0, bf16: bool = False, minutes: float | None = None, log=print, after_epoch=None) -> list:
    """The training loop of the draft heads: step_loss(group of sequences) -> (loss, progress bar notes) on
    `batches` of them, AdamW (betas 0.9, 0.95) with 5% warm-up then a cosine decay, gradients clipped to norm
    0.5, optionally under bfloat16 autocast. With `minutes`, the decay follows the elapsed share of that budget
    where it is ahead of the steps' and training stops when it is spent. -> the mean loss of each epoch."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    steps = max(1, epochs * len(batches(sequences, tokens_per_batch, rng)))
    warmup = max(1, steps // 20)
    started, budget = time.monotonic(), 60 * minutes if minutes else math.inf

    def spent() -> float:  # the share of the time budget used
        return (time.monotonic() - started) / budget

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min((i + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(max(i / steps, spent()), 1.0)))))
    history = []
    head.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        bar = progress_bar(batches(sequences, tokens_per_batch, rng), desc=f"epoch {epoch + 1}/{epochs}")
        for group in bar:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, notes = step_loss(group)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            optimizer.step()
            schedule.step()
            total, count = total + loss.item(), count + 1
            bar.set_postfix(**notes)
            if spent() >= 1:
                break
        history.append(total / count)
        note = ""
        if after_epoch is not None:
            head.eval()
            note = f", {after_epoch()}"
            head.train()
        log(f"epoch {epoch + 1}: mean loss {history[-1]:.4f}{note}")
        if spent() >= 1:
            log(f"{minutes} minutes spent: training stops")
            break
    head.eval()
    return history


@torch.no_grad()
def evaluate(head: EagleHead, embedding: torch.Tensor, sequences: list, top_k: int = 5, chain: int = 3) -> dict:
    """Teacher-forced acceptance on answer positions: alpha_1 = P(draft top-1 == the target's next token),
    the top-k recall (the next token among the draft's k best), and the expected tokens per step of a chain
    of `chain` drafts on the head's own features (bonus included): 1 + P(1st hit) + P(1st and 2nd hit) + ..."""
    hits = recall = positions = chain_tokens = 0
    for group in batches(sequences, 8192, random.Random(0)):
        embeds, features, _, mask, next_tokens = pair_batch(head, embedding, group)
        steps = head.unrolled(embeds, features, chain)
        valid = mask & (next_tokens >= 0)
        best = head.draft_to_target[steps[0][1].topk(top_k, -1).indices]  # [B, L, k]
        truth = next_tokens[..., None]
        hits += int((best[..., 0:1] == truth)[valid].sum())
        recall += int((best == truth).any(-1)[valid].sum())
        positions += int(valid.sum())
        alive = valid.clone()
        for step, (_, logits) in enumerate(steps):
            truth = shifted(next_tokens, step, -1)
            alive &= (head.draft_to_target[logits.argmax(-1)] == truth) & (truth >= 0)
            chain_tokens += int(alive.sum())
    return {"alpha_1": hits / positions, f"top{top_k}_recall": recall / positions,
            f"chain{chain}_tokens": 1 + chain_tokens / positions, "positions": positions}


# ---------------------------------------------------------------- command line
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m specdec_kernels.train.eagle", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the head (.eagle.safetensors)")
    parser.add_argument("--model", help="a GGUF file or a Hugging Face directory (default: the embedded model)")
    parser.add_argument("--data", help="cache of the generated data (read if it exists, else written)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated at once")
    parser.add_argument("--limit", type=int, help="use only this many round-one conversations")
    parser.add_argument("--topic-prompts", type=int, default=1800, help="round-one questions drawn from topics x templates")
    parser.add_argument("--draft-vocab", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--ce-weight", type=float, default=0.1)
    parser.add_argument("--unroll", type=int, default=1, help="train this many draft steps deep on the head's "
                        "own features (1: teacher-forced only)")
    parser.add_argument("--eval-prompts", help="also report acceptance on the target's answers to these prompts' "
                        "first turns after each epoch, and leave them out of the training prompts (default: "
                        "the packaged end-to-end prompts, bench.e2e.DEFAULT_PROMPTS; '' to skip)")
    parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    parser.add_argument("--init", help="go on training this head (.eagle.safetensors; its draft vocabulary is kept)")
    parser.add_argument("--copy-last-layer", action="store_true", help="start from the target's last layer")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="train on this share of the data")
    args = parser.parse_args(argv)
    if args.unroll < 1:
        parser.error(f"--unroll must be at least 1, got {args.unroll}")
    args.eval_prompts = eval_prompts_path(parser, args.eval_prompts)

    from specdec_kernels.engines.transformers import load_tokenizer
    from specdec_kernels.models import embedded_model_path, load_model

    from .prompts import round_one, round_two

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    path = args.model or embedded_model_path()
    target = load_model(path)
    tokenizer = load_tokenizer(path)
    measured_on = first_turns(args.eval_prompts) if args.eval_prompts else []

    def both_rounds():
        first = round_one(topic_prompts=args.topic_prompts, exclude=measured_on)[: args.limit]
        answered = collect(target, tokenizer, first, args.max_new_tokens, args.batch_size, "round 1")
        texts = [(m, tokenizer.decode(s.tokens[s.answer_start:], skip_special_tokens=True)) for m, s in answered]
        second = collect(target, tokenizer, round_two(texts), args.max_new_tokens, args.batch_size, "round 2")
        return [s for _, s in answered + second]

    sequences = cached_sequences(args.data, both_rounds)
    answer_tokens = sum(s.tokens.numel() - s.answer_start for s in sequences)
    print(f"{len(sequences)} sequences, {answer_tokens} answer tokens ({time.time() - started:.0f} s so far)")

    random.Random(0).shuffle(sequences)
    held_out, training = sequences[: len(sequences) // 20], sequences[len(sequences) // 20:]
    training = training[: int(len(training) * args.train_fraction)]
    if args.init:
        head = load_head(args.init, target)
        lineage = {"init": args.init, "init_command": head.metadata.get("command")}
    else:
        head = EagleHead.from_target(target, draft_vocabulary(training, args.draft_vocab), args.copy_last_layer)
        lineage = {}
    covered = torch.isin(torch.cat([s.tokens[s.answer_start:] for s in held_out]), head.draft_to_target)
    print(f"draft vocabulary {head.config.vocab_size}: covers {covered.float().mean():.1%} of held-out answer tokens")
    unseen = (unseen_prompt_sequences(target, tokenizer, measured_on, args.max_new_tokens, args.batch_size)
              if measured_on else [])
    print("before training:", evaluate(head, target.embedding, held_out))
    if unseen:
        print("before training, unseen prompts:", evaluate(head, target.embedding, unseen))

    def unseen_alpha():
        return f"unseen prompts alpha_1 {evaluate(head, target.embedding, unseen)['alpha_1']:.3f}"

    history = train(head, target.embedding, training, args.epochs, args.lr, args.tokens_per_batch, args.noise,
                    args.ce_weight, bf16=args.bf16, unroll=args.unroll, after_epoch=unseen_alpha if unseen else None)
    metrics = evaluate(head, target.embedding, held_out)
    print("held out:", metrics)
    unseen_metrics = evaluate(head, target.embedding, unseen) if unseen else None
    if unseen:
        print(f"unseen prompts ({args.eval_prompts}, first turns):", unseen_metrics)
    save_head(head, args.out, command=" ".join(["python -m specdec_kernels.train.eagle"] + (argv or sys.argv[1:])),
              held_out=metrics, unseen_prompts=unseen_metrics, losses=history, sequences=len(sequences),
              answer_tokens=answer_tokens, minutes=(time.time() - started) / 60, **lineage)
    print(f"wrote {args.out} after {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
