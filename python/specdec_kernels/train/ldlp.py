"""Train AdaEAGLE's draft length predictor (docs/design.md 4.4) for a target and its EAGLE head.

    python -m specdec_kernels.train.ldlp --out heads/NAME.ldlp.safetensors [--model PATH.gguf]
        [--head H.eagle.safetensors] [--k-max 3] [--limit N] [--under-weight 2] [--data CACHE.safetensors]

1. The target (our runner, batched, greedy) answers round-one conversations of train/prompts.py (seed 1,
   leaving out those of seed 0 that the shipped head was trained on, and the end-to-end prompts); every
   position's final-norm feature is kept (train.eagle's generate_batch / collect).
2. Labels from real drafts: at every answer position j the head drafts a greedy chain of k_max tokens after
   the target's next token; label(j) = how many of its leading tokens the target's greedy continuation
   matches. The same pass gives the predictor's third input, the head's top-1 probability for the first. While the draft matches, the drafter feeds the true tokens with the head's own features, which
   is what EagleHead.unrolled computes along the true path, so all positions take one batched pass
   (tests/drafters/test_ldlp.py checks this against EagleDrafter's chain). Positions too close to the end
   of an answer for their label to be known are left out.
3. The predictor learns label(j) from (embed(x_j), f_j, confidence): L1 with under-prediction weighted by
   lambda >= 1 (--under-weight; 1 is plain L1, which minimises the mean absolute error).
4. The held-out sequences (5%) give the predictor's LengthTable, saved with it: bins of its raw output and the labels
   in each, from which a machine's measured costs give the length each bin should draft (drafters.ldlp).
5. Held-out sequences and the target's answers to the end-to-end prompts' first turns report mean
   absolute error, exact and within-one rates, next to the best constant length's (chosen on training).
"""
import argparse
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

from specdec_kernels.drafters import EagleHead
from specdec_kernels.drafters.ldlp import LengthPredictor, LengthTable, PredictorConfig, check_k_max, save_predictor
from specdec_kernels.extras import progress_bar

from .eagle import batches, pair_batch, shifted


@dataclass
class Examples:
    tokens: torch.Tensor    # int64 [N]: x_j, the last accepted token when the length is decided
    features: torch.Tensor  # float16 [N, dim]: f_j, the target's final-norm feature there
    confidence: torch.Tensor  # float32 [N]: the head's top-1 probability for the first token after x_{j+1}
    labels: torch.Tensor    # int64 [N]: accepted tokens of a k_max chain drafted after x_{j+1}

    def __len__(self):
        return self.labels.numel()

    def inputs(self, index, embedding: torch.Tensor):
        """(embeds, features, confidence) of the positions `index`: what LengthPredictor takes."""
        return embedding[self.tokens[index]], self.features[index].float(), self.confidence[index]


# ---------------------------------------------------------------- labels
@torch.no_grad()
def chain_labels(head: EagleHead, embedding: torch.Tensor, sequences: list, k_max: int,
                 tokens_per_batch: int = 2048):
    """-> (labels, confidences), per sequence, over pairs j = (x_{j+1}, f_j). labels int64 [n - 1]: the number of
    leading tokens of the head's greedy k_max chain after x_{j+1} that equal x_{j+2}, x_{j+3}, ...; -1 outside
    the answer and where the answer ends before the label is known (the chain matched every token there was).
    confidences float32 [n - 1]: the head's top-1 probability for the chain's first token."""
    check_k_max(k_max)
    out, confidence = {}, {}
    for group in batches(sequences, tokens_per_batch, random.Random(0)):
        embeds, features, _, mask, next_tokens = pair_batch(head, embedding, group)
        matched = torch.zeros_like(next_tokens)  # leading draft tokens that match so far
        known = torch.zeros_like(next_tokens)    # steps with a true token to compare against
        alive = torch.ones_like(mask)
        for step, (_, logits) in enumerate(head.unrolled(embeds, features, k_max)):
            if step == 0:
                top = torch.softmax(logits.float(), -1).amax(-1)
            truth = shifted(next_tokens, step, -1)  # step u at pair j drafts x_{j+2+u}
            alive &= head.draft_to_target[logits.argmax(-1)] == truth
            matched += alive
            known += truth >= 0
        labels = torch.where(mask & ((matched < known) | (known == k_max)), matched, -1)
        for row, s in enumerate(group):
            out[id(s)] = labels[row, : s.tokens.numel() - 1]
            confidence[id(s)] = top[row, : s.tokens.numel() - 1]
    return [out[id(s)] for s in sequences], [confidence[id(s)] for s in sequences]


def examples(sequences: list, labels: list, confidences: list) -> Examples:
    """The labelled positions of `sequences` (labels and confidences from chain_labels) as predictor inputs."""
    tokens, features, confidence, kept = [], [], [], []
    for s, label, top in zip(sequences, labels, confidences):
        keep = label >= 0
        tokens.append(s.tokens[:-1][keep])
        features.append(s.features[:-1][keep])
        confidence.append(top[keep])
        kept.append(label[keep])
    return Examples(torch.cat(tokens), torch.cat(features).half(), torch.cat(confidence), torch.cat(kept))


# ---------------------------------------------------------------- training
def weighted_l1(predicted: torch.Tensor, labels: torch.Tensor, under_weight: float) -> torch.Tensor:
    """L1 with under-prediction (predicted < label) weighted by under_weight (AdaEAGLE's lambda)."""
    error = labels - predicted
    return torch.where(error > 0, under_weight * error, -error).mean()


def train(predictor: LengthPredictor, embedding: torch.Tensor, data: Examples, epochs: int, lr: float = 1e-3,
          batch_size: int = 256, under_weight: float = 2.0, seed: int = 0, log=print) -> list:
    """AdamW, linear decay to zero; returns the mean loss of each epoch. The output bias starts at the
    constant the loss prefers (the under_weight / (1 + under_weight) quantile of the labels)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    labels = data.labels.float()
    with torch.no_grad():
        predictor.w_out.bias.fill_(float(labels.quantile(under_weight / (1 + under_weight))))
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    history = []
    predictor.train()
    progress = progress_bar(total=steps, desc="training the length predictor")
    for epoch in range(epochs):
        total = 0.0
        order = torch.randperm(len(data), generator=generator)
        for index in order.split(batch_size):
            predicted = predictor(*data.inputs(index, embedding))
            loss = weighted_l1(predicted, labels[index], under_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * index.numel()
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.3f}")
        history.append(total / len(data))
        log(f"epoch {epoch + 1}: mean loss {history[-1]:.4f}")
    progress.close()
    predictor.eval()
    return history


def best_constant(labels: torch.Tensor, k_max: int) -> int:
    """The fixed draft length with the smallest mean absolute error on `labels`."""
    errors = [(labels - k).abs().float().mean() for k in range(k_max + 1)]
    return int(torch.stack(errors).argmin())


@torch.no_grad()
def held_out_table(predictor: LengthPredictor, embedding: torch.Tensor, data: Examples) -> LengthTable:
    """The predictor's raw outputs on `data` against its labels (positions the predictor was not trained on)."""
    raw = torch.cat([predictor(*data.inputs(i, embedding)) for i in torch.arange(len(data)).split(4096)])
    return LengthTable.of(raw, data.labels, predictor.config.k_max)


def length_metrics(lengths: torch.Tensor, labels: torch.Tensor, under_weight: float) -> dict:
    """Predicted lengths vs labels: mean absolute error, exact and within-one rates, the training loss (the
    weighted L1), and per step the tokens drafted and the draft tokens accepted (min(length, label))."""
    error = (lengths - labels).abs().float()
    return {"mae": error.mean().item(), "exact": (error == 0).float().mean().item(),
            "loss": weighted_l1(lengths.float(), labels.float(), under_weight).item(),
            "within_1": (error <= 1).float().mean().item(), "drafted": lengths.float().mean().item(),
            "accepted": torch.minimum(lengths, labels).float().mean().item()}


@torch.no_grad()
def evaluate(predictor: LengthPredictor, embedding: torch.Tensor, data: Examples, constant: int,
             under_weight: float = 2.0) -> dict:
    """{"predictor": metrics, "constant K": metrics} on `data`."""
    lengths = torch.cat([predictor.lengths(*data.inputs(i, embedding)) for i in torch.arange(len(data)).split(4096)])
    fixed = torch.full_like(data.labels, constant)
    return {"predictor": length_metrics(lengths, data.labels, under_weight),
            f"constant {constant}": length_metrics(fixed, data.labels, under_weight)}


def report(name: str, metrics: dict, labels: torch.Tensor) -> str:
    counts = torch.bincount(labels).tolist()
    lines = [f"{name}: {len(labels)} positions, label counts {counts}",
             f"  {'':<12} {'MAE':>6} {'exact':>6} {'within1':>7} {'loss':>6} {'drafted':>7} {'accepted':>8}"]
    for who, m in metrics.items():
        lines.append(f"  {who:<12} {m['mae']:6.3f} {m['exact']:6.3f} {m['within_1']:7.3f} {m['loss']:6.3f} "
                     f"{m['drafted']:7.2f} {m['accepted']:8.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line
def conversations(limit, exclude) -> list:
    """Round-one conversations (seed 1) other than seed 0's, which the shipped head was trained on: labels on
    text the head has learned would overstate its acceptance."""
    from .prompts import round_one

    seen = {m[0]["content"] for size in (600, 1800) for m in round_one(seed=0, topic_prompts=size)}
    fresh = [m for m in round_one(seed=1, exclude=exclude) if m[0]["content"] not in seen]
    return fresh[:limit]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m specdec_kernels.train.ldlp", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="where to write the predictor (.ldlp.safetensors)")
    parser.add_argument("--model", help="a GGUF file or a Hugging Face directory (default: the embedded model)")
    parser.add_argument("--head", help="the EAGLE head whose drafts are labelled (default: the one shipped)")
    parser.add_argument("--data", help="cache of the generated sequences (read if it exists, else written)")
    parser.add_argument("--k-max", type=int, default=3, help="the longest chain the predictor may ask for")
    parser.add_argument("--limit", type=int, help="use only this many conversations")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated at once")
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--under-weight", type=float, default=2.0, help="lambda: the loss weight of "
                        "under-prediction (>= 1; 1 is plain L1)")
    parser.add_argument("--eval-prompts", help="also report on the target's answers to these prompts' first "
                        "turns, left out of training (default: the packaged end-to-end prompts; '' to skip)")
    args = parser.parse_args(argv)
    try:
        check_k_max(args.k_max)
    except ValueError as error:
        parser.error(f"--k-max: {error}")
    if args.under_weight < 1:
        parser.error(f"--under-weight must be at least 1 (1: plain L1, the mean absolute error), got {args.under_weight}")
    if args.limit is not None and args.limit < 20:
        parser.error(f"--limit must be at least 20 (5% of the sequences are held out), got {args.limit}")

    from specdec_kernels.bench.e2e import first_turns
    from specdec_kernels.drafters import default_head_path, load_head
    from specdec_kernels.engines.transformers import load_tokenizer
    from specdec_kernels.models import embedded_model_path, load_model

    from .eagle import cached_sequences, collect, eval_prompts_path, unseen_prompt_sequences

    args.eval_prompts = eval_prompts_path(parser, args.eval_prompts)
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    path = args.model or embedded_model_path()
    head_path = args.head or default_head_path(path)
    if head_path is None:
        parser.error(f"no EAGLE head for {path}: pass --head (train one with python -m specdec_kernels.train.eagle)")
    target, tokenizer = load_model(path), load_tokenizer(path)
    head = load_head(head_path, target)
    measured_on = first_turns(args.eval_prompts) if args.eval_prompts else []
    sequences = cached_sequences(args.data, lambda: [s for _, s in collect(
        target, tokenizer, conversations(args.limit, measured_on), args.max_new_tokens, args.batch_size, "answers")])
    answer_tokens = sum(s.tokens.numel() - s.answer_start for s in sequences)
    print(f"{len(sequences)} sequences, {answer_tokens} answer tokens ({time.time() - started:.0f} s so far)")

    random.Random(0).shuffle(sequences)
    held_out, training = sequences[: len(sequences) // 20], sequences[len(sequences) // 20:]
    unseen = (unseen_prompt_sequences(target, tokenizer, measured_on, args.max_new_tokens, args.batch_size)
              if measured_on else [])
    data = {name: examples(group, *chain_labels(head, target.embedding, group, args.k_max))
            for name, group in (("training", training), ("held out", held_out), ("unseen prompts", unseen)) if group}
    print(f"labels ({time.time() - started:.0f} s so far)")
    constant = best_constant(data["training"].labels, args.k_max)
    predictor = LengthPredictor(PredictorConfig(target.config.dim, args.k_max, args.hidden_dim))
    history = train(predictor, target.embedding, data["training"], args.epochs, args.lr,
                    under_weight=args.under_weight)
    if len(data.get("held out", ())):  # none when every held-out answer ended before its first label
        predictor.length_table = held_out_table(predictor, target.embedding, data["held out"])
        print(f"length table (held out): raw output edges {[round(e, 3) for e in predictor.length_table.edges]}, "
              f"labels 0..{args.k_max} per bin {[list(row) for row in predictor.length_table.counts]}")
    results = {}
    for name in ("held out", "unseen prompts"):
        if name in data:
            results[name] = evaluate(predictor, target.embedding, data[name], constant, args.under_weight)
            print(report(name, results[name], data[name].labels))
    command = " ".join(["python -m specdec_kernels.train.ldlp"] + (argv if argv is not None else sys.argv[1:]))
    save_predictor(predictor, args.out, command=command, head=os.path.basename(head_path), results=results,
                   losses=history, sequences=len(sequences), answer_tokens=answer_tokens,
                   positions=len(data["training"]),
                   minutes=(time.time() - started) / 60)
    print(f"wrote {args.out} after {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
